import functools
import json
import time

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)

from app import db
from app.models import Note, User

auth = Blueprint("auth", __name__)
main = Blueprint("main", __name__)

MAX_NOTE_LENGTH = 280
API_LIMIT = 50
EVENTS_POLL_SECONDS = 0.5
EVENTS_KEEPALIVE_SECONDS = 15
EVENTS_MAX_SECONDS = 600


def current_user():
    """The logged-in User (looked up once per request), or None."""
    if "user" not in g:
        user_id = session.get("user_id")
        g.user = db.session.get(User, user_id) if user_id is not None else None
    return g.user


@main.app_context_processor
def inject_current_user():
    return {"current_user": current_user()}


def login_required(view):
    @functools.wraps(view)
    def wrapped_view(**kwargs):
        if current_user() is None:
            return redirect(url_for("auth.login"))
        return view(**kwargs)

    return wrapped_view


def latest_notes(limit):
    query = (
        sa.select(Note).options(so.joinedload(Note.author)).order_by(Note.id.desc()).limit(limit)
    )
    return db.session.scalars(query).all()


# --- auth ---------------------------------------------------------------------------------------


@auth.route("/register", methods=["GET", "POST"])
def register():
    if request.method == "GET":
        return render_template("login.html", title="Register", action="auth.register")
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    error = None
    if not username or len(username) > 64:
        error = "A username of 1 to 64 characters is required."
    elif not password:
        error = "A password is required."
    if error is not None:
        return render_template(
            "login.html", title="Register", action="auth.register", error=error
        ), 400
    user = User(username=username)
    user.set_password(password)
    db.session.add(user)
    try:
        db.session.commit()
    except sa.exc.IntegrityError:
        db.session.rollback()
        error = f"User {username} is already registered."
        return render_template(
            "login.html", title="Register", action="auth.register", error=error
        ), 409
    current_app.logger.info("user %s registered", username)
    return redirect(url_for("auth.login"))


@auth.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html", title="Log in", action="auth.login")
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    user = db.session.scalar(sa.select(User).where(User.username == username))
    if user is None or not user.check_password(password):
        error = "Invalid username or password."
        return render_template("login.html", title="Log in", action="auth.login", error=error), 401
    session.clear()
    session["user_id"] = user.id
    return redirect(url_for("main.index"))


@auth.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("main.index"))


# --- pages --------------------------------------------------------------------------------------


@main.get("/")
def index():
    notes = latest_notes(current_app.config["POSTS_PER_PAGE"])
    return render_template("index.html", title="Home", notes=notes)


@main.post("/notes")
@login_required
def create_note():
    body = request.form.get("body", "").strip()
    if not 1 <= len(body) <= MAX_NOTE_LENGTH:
        error = f"A note has 1 to {MAX_NOTE_LENGTH} characters."
        notes = latest_notes(current_app.config["POSTS_PER_PAGE"])
        return render_template("index.html", title="Home", notes=notes, error=error), 400
    user = current_user()
    username = user.username
    note = Note(body=body, author=user)
    db.session.add(note)
    db.session.commit()
    current_app.logger.info("note %d created by %s", note.id, username)
    return redirect(url_for("main.index"))


# --- JSON and events ----------------------------------------------------------------------------


@main.get("/api/notes")
def api_notes():
    return jsonify([note.to_dict() for note in latest_notes(API_LIMIT)])


@main.get("/whoami")
def whoami():
    user = current_user()
    return jsonify({"user": user.username if user is not None else None})


def sse(event, data, event_id=None):
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data)}")
    return "\n".join(lines) + "\n\n"


@main.get("/events")
def events():
    """Server-Sent Events: `hello` with the note count, then each note as `note`, oldest first.

    The stream starts after the note id in `Last-Event-ID` (a reconnecting EventSource sends it)
    or `?after=`, else from the first note. `?limit=N` ends it after N events (hello included);
    it ends after 10 minutes anyway, and the browser reconnects.
    """
    limit = request.args.get("limit", type=int)
    if limit is not None and limit < 1:
        abort(400, "limit must be a positive integer")
    after = request.headers.get("Last-Event-ID", type=int)
    if after is None:
        after = request.args.get("after", 0, type=int)
    # Counted before the response starts, so a database error is still an error response.
    count = db.session.scalar(sa.select(sa.func.count()).select_from(Note))
    db.session.remove()  # no connection or transaction held while the stream waits

    @stream_with_context
    def stream():
        deadline = time.monotonic() + EVENTS_MAX_SECONDS
        last_id = after
        yield sse("hello", {"count": count})
        sent = 1
        last_write = time.monotonic()
        while (limit is None or sent < limit) and time.monotonic() < deadline:
            batch = API_LIMIT if limit is None else min(API_LIMIT, limit - sent)
            query = (
                sa.select(Note)
                .options(so.joinedload(Note.author))
                .where(Note.id > last_id)
                .order_by(Note.id)
                .limit(batch)
            )
            notes = [note.to_dict() for note in db.session.scalars(query)]
            db.session.remove()
            for note in notes:
                yield sse("note", note, event_id=note["id"])
                last_id = note["id"]
                sent += 1
            if notes:
                last_write = time.monotonic()
            if len(notes) == batch:
                continue  # a full batch: more may be waiting, ask again without sleeping
            if time.monotonic() - last_write >= EVENTS_KEEPALIVE_SECONDS:
                yield ": keepalive\n\n"
                last_write = time.monotonic()
            time.sleep(EVENTS_POLL_SECONDS)

    return Response(
        stream(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
