"""What the load users send: images from a folder, bad inputs, and request bodies for each server mode.

Kept free of torch and the project's heavy modules: every locust process imports it, and the load generator
must spend the shared CPU on sending requests, not on importing a model stack.

Two body shapes, because the server's envelope fixes which one it understands (TorchServe parses every body
of an enveloped model as that envelope, so one run cannot honestly mix them):

- ``none`` (``make serve``, no envelope): raw image bytes with the ``X-NeuroViT-Explain`` header, or JSON
  ``{"data": "<base64>", "explain": ...}``, to ``/predictions/<model>``; the body is the answer.
- ``kserve`` (``TS_SERVICE_ENVELOPE=kserve``, as KServe's v1 protocol runs it): ``{"instances": [{"data":
  "<base64>", "explain": ...}]}`` to ``/v1/models/<model>:predict``; the answer is ``predictions[0]``.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}
ENVELOPES = ("none", "kserve")
EXPLAIN_HEADER = "X-NeuroViT-Explain"
MAX_IMAGES = 64  # enough variety for the server; all held in memory by every user


@dataclass(frozen=True)
class Call:
    """One HTTP request: where it goes, its body and headers."""

    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class BadInput:
    """A request the service must refuse with a 4xx. ``instance`` is the same fault as a KServe v1 instance
    (None when the fault cannot be put in one: a malformed JSON body is the envelope's to parse, not ours)."""

    name: str
    body: bytes
    content_type: str
    instance: dict | None


def load_images(folder: Path, create_demo: bool, limit: int = MAX_IMAGES) -> list[bytes]:
    """Up to ``limit`` image files from ``folder`` (masks skipped), spread across its classes.

    ``create_demo``: generate the project's demo set there first when the folder is missing
    (``neurovit data demo``, about 8 seconds)."""
    folder = Path(folder)
    if not folder.is_dir() and create_demo:
        command = [sys.executable, "-m", "training.cli", "data", "demo", "--out", str(folder)]
        subprocess.run(command, check=True, capture_output=True)
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder at {folder} (set --images or run `make demo-data`)")
    paths = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.endswith(".mask.png")
    )
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    step = max(1, len(paths) // limit)
    return [path.read_bytes() for path in paths[::step][:limit]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which holds almost no data (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + header + data + chunk(b"IEND", b"")


def bad_inputs(image: bytes) -> list[BadInput]:
    """The faults a client really sends: empty, random or text bodies, a cut upload, a bomb, broken JSON or
    base64, an unknown explanation name. ``image`` is a good image to damage."""
    noise = random.Random(7).randbytes(4096)
    text = b"patient notes: nothing to see here\n"
    octets = "application/octet-stream"
    truncated = image[: len(image) // 2]
    bomb = _png_header_only(30000, 30000)
    return [
        BadInput("empty body", b"", octets, {"data": ""}),
        BadInput("random bytes", noise, octets, {"data": b64(noise)}),
        BadInput("text", text, "text/plain", {"data": b64(text)}),
        BadInput("truncated image", truncated, "image/png", {"data": b64(truncated)}),
        BadInput("decompression bomb", bomb, "image/png", {"data": b64(bomb)}),
        BadInput("malformed JSON", b'{"data": "abc"', "application/json", None),
        BadInput(
            "malformed base64",
            json.dumps({"data": "not*base64!"}).encode(),
            "application/json",
            {"data": "not*base64!"},
        ),
        BadInput(
            "unknown explanation",
            json.dumps({"data": b64(image), "explain": "saliency"}).encode(),
            "application/json",
            {"data": b64(image), "explain": "saliency"},
        ),
    ]


class Protocol:
    """Builds calls for one server mode and extracts the answer (or error body) from a response body."""

    def __init__(self, envelope: str, model: str, token: str | None) -> None:
        if envelope not in ENVELOPES:
            raise ValueError(f"envelope must be one of {', '.join(ENVELOPES)}, got {envelope!r}")
        self.envelope, self.model = envelope, model
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.path = f"/v1/models/{model}:predict" if envelope == "kserve" else f"/predictions/{model}"

    def predict(self, image: bytes, explain: str, as_json: bool = False) -> Call:
        """An image asking for ``explain`` (none, rollout, heatmap or all)."""
        if self.envelope == "kserve":
            return self._json({"instances": [{"data": b64(image), "explain": explain}]})
        if as_json:
            return self._json({"data": b64(image), "explain": explain})
        headers = {"Content-Type": "application/octet-stream", EXPLAIN_HEADER: explain, **self.auth}
        return Call(self.path, image, headers)

    def bad(self, fault: BadInput) -> Call | None:
        """The fault in this mode's body shape; None when it has no such shape."""
        if self.envelope == "kserve":
            return None if fault.instance is None else self._json({"instances": [fault.instance]})
        return Call(self.path, fault.body, {"Content-Type": fault.content_type, **self.auth})

    def answer(self, body: dict) -> dict:
        """The one answer (prediction or error) in a response body of this mode."""
        if self.envelope == "kserve":
            return body["predictions"][0]
        return body

    def _json(self, payload: dict) -> Call:
        headers = {"Content-Type": "application/json", **self.auth}
        return Call(self.path, json.dumps(payload).encode(), headers)
