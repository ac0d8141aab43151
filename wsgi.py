"""WSGI entry point in a checkout: `gunicorn -c config/gunicorn.conf.py wsgi:app`."""
from app.wsgi import app  # noqa: F401
