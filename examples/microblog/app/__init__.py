import logging
import sys

from config import Config
from flask import Flask
from flask.logging import default_handler
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from flaskstack.extension import FlaskStack

db = SQLAlchemy()
migrate = Migrate()
stack = FlaskStack()


def create_app(config_class=Config):
    app = Flask(__name__)
    app.config.from_object(config_class)

    stack.init_app(app, db)
    db.init_app(app)
    migrate.init_app(app, db)

    from app.routes import auth, main

    app.register_blueprint(auth)
    app.register_blueprint(main)

    if app.config["LOG_TO_STDOUT"]:
        stream_handler = logging.StreamHandler(sys.stdout)
        stream_handler.setLevel(logging.INFO)
        app.logger.removeHandler(default_handler)  # else each line twice, once on stderr
        app.logger.addHandler(stream_handler)
        app.logger.setLevel(logging.INFO)

    return app


from app import models  # noqa: E402, F401
