"""The transcription service: OpenAI's audio API on Ray Serve (`python -m maxwhisper serve`).

    openai_api.py   the API's form, response formats and error shape (no Ray, no HTTP)
    http.py         the ingress's FastAPI app: endpoints, checks in order, errors
    deployments.py  the Serve application: the ingress, one model deployment per (backend, model)
    cli.py          the `serve` command
"""
