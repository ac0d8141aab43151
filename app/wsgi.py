"""The WSGI application gunicorn serves (`<package>.wsgi:app`); the top-level wsgi.py re-exports it."""
from . import create_app

app = create_app()
