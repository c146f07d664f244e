"""Azure Functions entry point: each route turns a func.HttpRequest into a call of
embedding_core and the result into a func.HttpResponse. No validation or logic lives here."""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _serve(route: str, req: func.HttpRequest) -> func.HttpResponse:
    # Imported on first request, so indexing the functions (a cold start) stays light.
    from embedding_core.service import ApiRequest, dispatch

    res = dispatch(route, ApiRequest(req.method, "/" + route, dict(req.headers),
                                     dict(req.params), req.get_body()))
    return func.HttpResponse(res.body, status_code=res.status, headers=res.headers,
                             mimetype="application/json")


@app.route(route="embeddings", methods=["POST"])
def embeddings(req: func.HttpRequest) -> func.HttpResponse:
    return _serve("embeddings", req)


@app.route(route="images/embeddings", methods=["POST"])
def image_embeddings(req: func.HttpRequest) -> func.HttpResponse:
    return _serve("images/embeddings", req)


@app.route(route="info", methods=["GET"])
def info(req: func.HttpRequest) -> func.HttpResponse:
    return _serve("info", req)


@app.route(route="health", methods=["GET"])
def health(req: func.HttpRequest) -> func.HttpResponse:
    return _serve("health", req)
