"""/dashboard: the operators' web page (server-rendered with Jinja2) and its JSON endpoints under /dashboard/api/.

Thin: it checks the session, parses the query string and renders what `DashboardService` returns.
"""
from __future__ import annotations

import os
from urllib.parse import urlencode

import gevent
from flask import Blueprint, current_app, jsonify, make_response, redirect, render_template, request

from app.pricing import format_usd
from app.services.dashboard import RANGES, DashboardInputError, parse_range
from app.services.dashboard_auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, SESSION_MAX_AGE
from app.storage import StorageError

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard",
               template_folder=os.path.join(_HERE, "templates"),
               static_folder=os.path.join(_HERE, "static", "dashboard"), static_url_path="/static")

# No inline script or style anywhere: everything the page runs or wears comes from /dashboard/static/.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
POLL_MS = 5000


def _services():
    return current_app.extensions["nexus"]


def _auth():
    return _services().dashboard_auth


def _client() -> str:
    return request.remote_addr or "?"


@bp.after_request
def _headers(resp):
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    # The token login URL must not leak to other sites through Referer.
    resp.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "dashboard.static":
        resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.before_request
def _require_session():
    if request.endpoint in ("dashboard.static", "dashboard.login"):
        return None
    auth = _auth()
    token = request.args.get("token")
    if token is not None and request.method == "GET" and not request.path.startswith("/dashboard/api/"):
        # Jupyter-style login link: take the key, set the cookie, and drop the key from the address bar.
        if not _key_ok(token):
            return _login_page("That key is not the dashboard key.", status=200)
        args = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
        target = request.path + ("?" + urlencode(args) if args else "")
        return _logged_in(redirect(target, code=303))
    if auth.has_session(request):
        return None
    if request.path.startswith("/dashboard/api/"):
        return jsonify({"type": "error", "error": {"type": "authentication_error",
                                                   "message": "Log in to the dashboard first"}}), 401
    nxt = request.full_path.rstrip("?") if request.method == "GET" else "/dashboard"
    return redirect("/dashboard/login?" + urlencode({"next": nxt}), code=303)


def _key_ok(given: str | None) -> bool:
    auth = _auth()
    client = _client()
    delay = auth.throttle.delay(client)
    if auth.key_matches(given):
        auth.throttle.succeeded(client)
        return True
    auth.throttle.failed(client)
    if delay:
        gevent.sleep(delay)  # repeated failures wait longer and longer (cooperative: others are served)
    return False


def _logged_in(resp):
    auth = _auth()
    resp.set_cookie(SESSION_COOKIE, auth.new_session(), max_age=SESSION_MAX_AGE, **auth.cookie_options(request))
    if LOGIN_CSRF_COOKIE in request.cookies:
        resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/dashboard/login")
    return resp


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/dashboard") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard"


def _login_page(error: str | None = None, status: int = 200):
    auth = _auth()
    nonce = auth.new_login_nonce()
    html = render_template("dashboard/login.html", error=error, csrf=nonce,
                           next=_safe_next(request.values.get("next")))
    resp = make_response(html, status)
    opts = auth.cookie_options(request)
    opts["path"] = "/dashboard/login"
    resp.set_cookie(LOGIN_CSRF_COOKIE, nonce, max_age=3600, **opts)
    return resp


@bp.route("/login", methods=["GET", "POST"])
def login():
    auth = _auth()
    if request.method == "GET":
        if auth.has_session(request):
            return redirect(_safe_next(request.args.get("next")), code=303)
        return _login_page()
    if not auth.login_nonce_ok(request, request.form.get("csrf")):
        return _login_page("The form expired; please try again.", status=400)
    if not _key_ok(request.form.get("key")):
        return _login_page("That key is not the dashboard key.")
    return _logged_in(redirect(_safe_next(request.form.get("next")), code=303))


@bp.post("/logout")
def logout():
    auth = _auth()
    if not auth.csrf_ok(auth.session(request), request.form.get("csrf")):
        return _error_page("The form expired; reload the page and try again.", 400)
    resp = redirect("/dashboard/login", code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


# --- pages --------------------------------------------------------------------------------

def _render(template: str, **context):
    auth = _auth()
    session = auth.session(request)
    return render_template(template, csrf=auth.csrf_token(session) if session else "", usd=format_usd,
                           cost_cell=cost_cell, nav=request.endpoint, **context)


def cost_cell(row: dict) -> str:
    """A summed cost as shown: "unpriced" when nothing in it had a price, "*" when part of it had none."""
    unpriced, requests = int(row.get("unpricedRequests") or 0), int(row.get("requests") or 0)
    if unpriced and unpriced >= requests:
        return "unpriced"
    return format_usd(row.get("costUsd") or 0.0) + ("*" if unpriced else "")


def _error_page(message: str, status: int):
    return make_response(_render("dashboard/error.html", message=message), status)


def _guard(fn):
    try:
        return fn()
    except DashboardInputError as exc:
        if request.path.startswith("/dashboard/api/"):
            return jsonify({"type": "error", "error": {"type": "invalid_request_error", "message": str(exc)}}), 400
        return _error_page(str(exc), 400)
    except StorageError:
        message = "The usage store is unavailable; usage is buffered and will be written when it is back."
        if request.path.startswith("/dashboard/api/"):
            return jsonify({"type": "error", "error": {"type": "api_error", "message": message}}), 503
        return _error_page(message, 503)


def _overview_data():
    return _services().dashboard.overview(parse_range(request.args))


@bp.get("")
@bp.get("/")
def overview():
    def page():
        data = _overview_data()
        return _render("dashboard/overview.html", data=data, ranges=RANGES, poll_ms=_poll_ms(),
                       args=request.args)
    return _guard(page)


def _poll_ms() -> int:
    try:
        return max(1000, int(request.args.get("poll") or POLL_MS))
    except ValueError:
        return POLL_MS


@bp.get("/requests")
def requests_page():
    def page():
        data = _services().dashboard.requests(request.args)
        known = _services().storage.known_values()
        args = {k: v for k, v in request.args.items() if k not in ("before", "token")}
        older = None
        if data["next"]:
            older = "/dashboard/requests?" + urlencode({**args, "before": data["next"]})
        newest = "/dashboard/requests" + ("?" + urlencode(args) if args else "")
        return _render("dashboard/requests.html", data=data, known=known, args=request.args, older=older,
                       newest=newest if request.args.get("before") else None)
    return _guard(page)


@bp.get("/requests/<int:row_id>")
def request_detail(row_id: int):
    def page():
        data = _services().dashboard.detail(row_id)
        if data is None:
            return _error_page(f"No request #{row_id} (it may have been pruned: USAGE_RETENTION_ROWS).", 404)
        return _render("dashboard/request.html", data=data)
    return _guard(page)


@bp.get("/credentials")
def credentials_page():
    return _guard(lambda: _render("dashboard/credentials.html", creds=_services().dashboard.credentials_status(),
                                  mode=_services().settings.proxy_mode))


# --- JSON ---------------------------------------------------------------------------------

@bp.get("/api/overview")
def api_overview():
    return _guard(lambda: jsonify(_overview_data()))


@bp.get("/api/requests")
def api_requests():
    return _guard(lambda: jsonify(_services().dashboard.requests(request.args)))


@bp.get("/api/requests/<int:row_id>")
def api_request(row_id: int):
    def answer():
        data = _services().dashboard.detail(row_id)
        if data is None:
            return jsonify({"type": "error", "error": {"type": "not_found_error",
                                                       "message": f"No request #{row_id}"}}), 404
        return jsonify({"row": data["row"], "fields": dict(data["fields"])})
    return _guard(answer)


@bp.get("/api/credentials")
def api_credentials():
    return _guard(lambda: jsonify({"credentials": _services().dashboard.credentials_status()}))
