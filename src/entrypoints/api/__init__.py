"""The HTTP API (Litestar): validates submissions, enqueues them, and answers at once.

`entrypoints.api.app.create_app` is the factory uvicorn serves. The API never runs a job.
"""
