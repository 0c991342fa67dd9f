"""feedback – an application's verdict on an earlier prediction (live accuracy).

Request header (predict socket; no data frames)::

    {"v": 1, "id": "43", "op": "feedback",
     "request_id": "5f0c2a9e-1812",     # the "request_id" of a predict reply
     "label": "7" | 7,                  # the true class: its label text or index, or
     "correct": true,                   # ...whether the prediction was right (exactly one of the two)
     "model": "digits"}                 # optional: narrows the search

Reply: ``{"model", "version", "predicted", "correct", "accuracy", "feedback"}`` –
the version that made the prediction, its top-1 index, the verdict, and that
version's live accuracy over its last ``health.window`` reports with their count.
Each prediction takes one report.  ``UNKNOWN_REQUEST`` (exit 4): the id was never
a predict reply of this daemon run, was reported already, or is older than the
last ``health.window`` predictions of its version.  Classifier outputs only: a
prediction whose first output is not a score vector cannot be matched.

CLI: ``edged feedback REQUEST_ID (--label L | --correct | --wrong) [--model NAME]``.
"""

from __future__ import annotations

from typing import Any

from edged.errors import RequestError
from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames, optional_str

NAME = "feedback"
ENDPOINTS = frozenset({"predict"})
MAX_ID_CHARS = 64


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    no_frames(frames)
    rid = header.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID_CHARS:
        raise RequestError(f"'request_id' must be a non-empty string of at most {MAX_ID_CHARS} characters "
                           "(the request_id of a predict reply)")
    optional_str(header, "model")
    label, correct = header.get("label"), header.get("correct")
    if (label is None) == (correct is None):
        raise RequestError("give exactly one of 'label' (the true class) or 'correct' (true/false)")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
        raise RequestError("'label' must be a label text or a class index")
    if isinstance(label, str) and len(label) > 256:
        raise RequestError("'label' is longer than 256 characters")
    if correct is not None and not isinstance(correct, bool):
        raise RequestError("'correct' must be true or false")


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    h = req.header
    result = daemon.models.feedback(h["request_id"], model=h.get("model"), label=h.get("label"),
                                    correct=h.get("correct"))
    return {"id": req.id, "op": NAME, **result}
