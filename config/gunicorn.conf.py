"""`gunicorn -c config/gunicorn.conf.py wsgi:app` (Procfile, Dockerfile): the config lives in app/gunicorn_conf.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app.gunicorn_conf import *  # noqa: E402,F401,F403
