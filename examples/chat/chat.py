"""A small chat with rooms, written the way Flask-SocketIO's documentation teaches.

Run it on Flask-SocketIO's own server with `python chat.py`, or deploy it on the stack by
README "Your app" (APP_MODULE=chat:app, no migration): the code is the same.
"""

import os

from flask import Flask, render_template, request
from flask_socketio import SocketIO, emit, join_room, leave_room, send

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "change me")
socketio = SocketIO(app)


@app.route("/")
def index():
    return render_template("index.html")


@app.post("/announce")
def announce():
    """An ordinary view that pushes an event to every connected client."""
    socketio.emit("announcement", {"text": request.get_json()["text"]})
    return {"sent": True}


@socketio.on("join")
def on_join(data):
    username = data["username"]
    room = data["room"]
    join_room(room)
    send(username + " has entered the room.", to=room)


@socketio.on("leave")
def on_leave(data):
    username = data["username"]
    room = data["room"]
    leave_room(room)
    send(username + " has left the room.", to=room)


@socketio.on("chat")
def on_chat(data):
    emit("chat", {"username": data["username"], "text": data["text"]}, to=data["room"])
    return "delivered"  # the sender's acknowledgement


@socketio.event
def shout(data):
    emit("shout", data, broadcast=True)


@socketio.on_error_default
def on_error(e):
    return {"error": type(e).__name__, "event": request.event["message"]}


if __name__ == "__main__":
    socketio.run(app)
