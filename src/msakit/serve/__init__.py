"""Prediction for real videos (``msakit predict``) and the HTTP server (``msakit serve``).

:class:`Predictor` (predict.py) turns a video into a score with a trained run; ``create_app``
(app.py) serves it with FastAPI; default.py builds the model ``--run default`` uses.
"""

from msakit.serve.predict import Predictor

__all__ = ["Predictor"]
