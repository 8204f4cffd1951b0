"""Load-test examples/hello: `make loadtest LOCUSTFILE=examples/hello/locustfile.py`.

Each user class is a scenario, run against the stack and the built-in server alike.
"""

from locust import FastHttpUser, constant, task


class HelloUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def greet(self):
        self.client.get("/hello")


class StaticUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def stylesheet(self):
        self.client.get("/static/hello.css")
