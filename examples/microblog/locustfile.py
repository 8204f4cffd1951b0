"""Load-test the example: `make loadtest LOCUSTFILE=examples/microblog/locustfile.py`.

Each user class is a scenario, run against the stack and the built-in server alike.
"""

from locust import FastHttpUser, constant, task


class PageUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def index(self):
        self.client.get("/")


class StaticUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def stylesheet(self):
        self.client.get("/static/style.css")
