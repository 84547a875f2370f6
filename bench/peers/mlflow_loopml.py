"""An MLflow pyfunc flavour for a loopml model directory (loader module: no pickled model).

Used only by bench/serve_peers.py, inside the peer's own virtualenv."""

import loopml


class _Wrapper:
    def __init__(self, model) -> None:
        self.model = model

    def predict(self, model_input, params=None):
        return self.model.predictions(model_input)


def _load_pyfunc(data_path):
    return _Wrapper(loopml.load(data_path))
