"""Azure Functions entry point: each route turns a func.HttpRequest into a call of
embedding_core and the result into a func.HttpResponse. No validation or logic lives here."""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

GET = ["GET", "HEAD"]   # a GET route answers HEAD too: its headers, no body
ALL_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def _serve(route: str, req: func.HttpRequest, context: func.Context | None) -> func.HttpResponse:
    # The service is imported on the first request, so indexing the functions (a cold start)
    # stays light.
    from embedding_core.entry import serve

    status, headers, body = serve(route, req.method, req.url, dict(req.headers), dict(req.params),
                                  req.get_body(), dict(req.route_params), invocation=context)
    return func.HttpResponse(body, status_code=status, headers=headers,
                             mimetype="application/json")


# ``context``: the invocation's, which the Functions worker passes (its trace context is the host's
# request, the parent of the app's span); the local host and direct calls pass none.

# -- Azure AI Model Inference ---------------------------------------------------------------------
@app.route(route="embeddings", methods=["POST"])
def embeddings(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:
    return _serve("embeddings", req, context)


@app.route(route="images/embeddings", methods=["POST"])
def image_embeddings(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:
    return _serve("images/embeddings", req, context)


@app.route(route="info", methods=GET)
def info(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:
    return _serve("info", req, context)


@app.route(route="health", methods=GET)
def health(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:
    return _serve("health", req, context)


# -- OpenAI-compatible ----------------------------------------------------------------------------
@app.route(route="v1/embeddings", methods=["POST"])
def openai_embeddings(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:
    return _serve("v1/embeddings", req, context)


@app.route(route="v1/models", methods=GET)
def openai_models(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:
    return _serve("v1/models", req, context)


@app.route(route="v1/models/{model}", methods=GET)
def openai_model(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:
    return _serve("v1/models/{model}", req, context)


@app.route(route="openai/deployments/{deployment}/embeddings", methods=["POST"])
def azure_openai_embeddings(req: func.HttpRequest,
                            context: func.Context = None) -> func.HttpResponse:
    return _serve("openai/deployments/{deployment}/embeddings", req, context)


# Azure OpenAI's v1 API path (OpenAI(base_url=".../openai/v1/")): the same as /v1
@app.route(route="openai/v1/embeddings", methods=["POST"])
def azure_openai_v1_embeddings(req: func.HttpRequest,
                               context: func.Context = None) -> func.HttpResponse:
    return _serve("openai/v1/embeddings", req, context)


@app.route(route="openai/v1/models", methods=GET)
def azure_openai_v1_models(req: func.HttpRequest,
                           context: func.Context = None) -> func.HttpResponse:
    return _serve("openai/v1/models", req, context)


@app.route(route="openai/v1/models/{model}", methods=GET)
def azure_openai_v1_model(req: func.HttpRequest,
                          context: func.Context = None) -> func.HttpResponse:
    return _serve("openai/v1/models/{model}", req, context)


# -- the OpenAPI document, and every other route and method ---------------------------------------
@app.route(route="swagger.json", methods=GET)
def swagger(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:
    return _serve("swagger.json", req, context)


@app.route(route="openapi.json", methods=GET)
def openapi(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:
    return _serve("openapi.json", req, context)


@app.route(route="{*path}", methods=ALL_METHODS)
def not_found(req: func.HttpRequest, context: func.Context = None) -> func.HttpResponse:
    return _serve("{*path}", req, context)
