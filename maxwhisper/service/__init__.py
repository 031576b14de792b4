"""The transcription service: OpenAI's audio API on Ray Serve (`python -m maxwhisper serve`).

openai_api.py   the API's form, response formats, streamed events and error shape (no Ray, no HTTP)
upload.py       the multipart form read as it streams in, within its limits
access.py       who may use it: API keys, the Host, the Origin (ASGI middleware)
http.py         the ingress's FastAPI app: endpoints, checks in order, errors
front.py        the HTTP server (uvicorn) the ingress runs
replicas.py     which model replicas are up, as the ingress sees them
deployments.py  the Serve application: the ingress, one model deployment per (backend, model)
cli.py          the `serve` command
"""
