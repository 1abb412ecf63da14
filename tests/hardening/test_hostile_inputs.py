"""Every case of the hostile corpus against a real server at default limits.

The rule for each answer: OK with a finite vector equal, bit for bit, to the offline pipeline on
the same bytes (and to the file it must stand for: the first frame, the JPEG without its trailing
bytes), or INVALID_ARGUMENT whose message names `image 0` and a reason. Never INTERNAL or
UNKNOWN, and the server answers a good image correctly after every case.

`pytest tests/hardening/test_hostile_inputs.py -s` prints the table case -> answer.

Also here: the corpus sent by eight callers at once, one request holding many bad images, the
zip bomb's refusal time, and the JSON log's integrity under TIFFs that make libtiff complain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedder.client import to_numpy
from embedder.errors import InvalidImage
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.hardening.conftest import Offline, image_request, offline_for
from tests.hardening.corpus import Case, corpus
from tests.hardening.fuzz_target import seed_images
from tests.support.inprocess import Served, serving
from tests.support.models import CLIP
from tests.support.processes import ServerProcess

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Target:
    served: Served
    offline: Offline
    good: bytes
    good_vector: np.ndarray

    def still_serves(self) -> None:
        np.testing.assert_array_equal(self.served.vectors(self.good, model=CLIP)[0], self.good_vector)


@pytest.fixture(scope="module")
def target(tiny_models: Path, good_jpeg: bytes) -> Iterator[Target]:
    with serving(tiny_models) as served:  # the server's own default limits
        offline = offline_for(served)
        good_vector = offline.vector(good_jpeg)
        yield Target(served, offline, good_jpeg, good_vector)


@pytest.fixture(scope="module")
def table() -> Iterator[dict[str, str]]:
    answers: dict[str, str] = {}
    yield answers
    width = max((len(name) for name in answers), default=10)
    print(f"\n\nhostile corpus: {len(answers)} cases at default limits\n")
    print(f"| {'case':{width}} | answer |\n|{'-' * (width + 2)}|--------|")
    for name, answer in answers.items():
        print(f"| {name:{width}} | {answer} |")


def ask_stub(stub: pb_grpc.EmbedderStub, data: bytes) -> tuple[grpc.StatusCode, str, np.ndarray | None]:
    try:
        response = stub.Embed(image_request(data), timeout=120.0)
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details()), None
    return grpc.StatusCode.OK, "", to_numpy(response).embeddings[0]


def ask(served: Served, data: bytes) -> tuple[grpc.StatusCode, str, np.ndarray | None]:
    return ask_stub(served.stub, data)


def check_answer(
    target: Target, case: Case, code: grpc.StatusCode, details: str, vector: np.ndarray | None
) -> None:
    if code == grpc.StatusCode.OK:
        assert vector is not None and case.expect != "invalid", f"{case.name}: accepted, expected a refusal"
        assert np.isfinite(vector).all()
        np.testing.assert_array_equal(vector, target.offline.vector(case.data))
        if case.same_as is not None:
            np.testing.assert_array_equal(vector, target.offline.vector(case.same_as))
        if case.differs_from is not None:
            assert not np.array_equal(vector, target.offline.vector(case.differs_from)), (
                "embedded the wrong frame"
            )
        return
    assert code == INVALID, f"{case.name}: {code.name} {details!r}"
    assert case.expect != "ok", f"{case.name}: a valid image was refused: {details}"
    assert details.startswith("image 0: ") and len(details) > len("image 0: ") + 5, details
    if case.reasons:
        assert any(reason in details for reason in case.reasons), (
            f"{case.name}: {details!r} lacks {case.reasons}"
        )
    with pytest.raises(InvalidImage):  # the offline pipeline refuses it as well
        target.offline.vector(case.data)


@pytest.mark.parametrize("case", corpus(), ids=lambda case: case.name)
def test_hostile_input_is_answered_ok_or_invalid(target: Target, table: dict[str, str], case: Case) -> None:
    started = time.perf_counter()
    code, details, vector = ask(target.served, case.data)
    table[case.name] = (
        f"{code.name} {details}".strip() + f" ({(time.perf_counter() - started) * 1000:.0f} ms)"
    )
    check_answer(target, case, code, details, vector)
    target.still_serves()


def test_corpus_has_the_issue_cases() -> None:
    names = {case.name for case in corpus()}
    assert len(names) >= 30
    for required in (
        "empty",
        "one_byte",
        "png_header_50000x50000",
        "png_zip_bomb_20000x20000",
        "gif_canvas_65535x65535",
        "animated_gif_3_frames",
        "multipage_tiff_3_pages",
        "animated_webp_3_frames",
        "cmyk_jpeg",
        "png_16bit_grey",
        "png_1bit",
        "jpeg_trailing_garbage",
        "png_bad_crc_idat",
        "pdf",
        "svg",
        "ico",
        "psd",
        "tga",
        "jpeg_bogus_huffman_table",
        "png_16MiB_itxt",
        "tiff_absurd_strip_offsets",
        "bmp_negative_width",
        "png_zero_width",
        "jpeg_exif_laden",
        "bmp_header_30000x30000",
    ):
        assert required in names, required


def test_whole_corpus_concurrently_gives_the_same_answers(target: Target) -> None:
    """Eight callers at once over the whole corpus (decode is not serialised anywhere): every
    answer is the one a lone request gets."""
    cases = [case for case in corpus() if len(case.data) < (4 << 20)]  # the 16 MiB case is covered alone
    alone = {case.name: ask(target.served, case.data) for case in cases}
    with ThreadPoolExecutor(8) as pool:
        together = dict(zip((c.name for c in cases), pool.map(lambda c: ask(target.served, c.data), cases)))
    for name, (code, details, vector) in together.items():
        assert (code, details) == alone[name][:2], name
        if vector is not None:
            np.testing.assert_array_equal(vector, alone[name][2])
    target.still_serves()


def test_one_request_with_many_bad_images_names_each(target: Target) -> None:
    bad = [case.data for case in corpus() if case.expect == "invalid"][:7]
    error = target.served.error(image_request(target.good, *bad))
    assert error.code() == INVALID, error.details()
    details = str(error.details())
    assert "7 images rejected" in details and "(and 2 more)" in details, details
    for index in range(1, 6):
        assert f"image {index}: " in details
    assert "image 0:" not in details  # the good one is not blamed
    target.still_serves()


def test_zip_bomb_is_refused_from_the_header_quickly(target: Target) -> None:
    """400 Mpx of zeros would take seconds and 400 MB to inflate; the header refusal takes
    about as long as a tiny image (generous bound: 20 x a good image, which also decodes)."""
    bomb = next(case.data for case in corpus() if case.name == "png_zip_bomb_20000x20000")
    timings = {}
    for name, data in (("good", target.good), ("bomb", bomb)):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            ask(target.served, data)
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    assert timings["bomb"] < max(20 * timings["good"], 0.5), timings
    code, details, _ = ask(target.served, bomb)
    assert code == INVALID and ("exceeds" in details or "bomb" in details), details


def corrupt_tiffs() -> list[bytes]:
    """Compressed TIFFs (CCITT G4, LZW, deflate) with their strips scribbled over: libtiff decodes them."""
    seeds = seed_images()
    out = []
    for name in ("g4.tiff", "tiff_lzw.tiff", "tiff_adobe_deflate.tiff"):
        data = bytearray(seeds[name])
        for at in range(40, min(len(data) - 200, 400), 7):
            data[at] ^= 0x5A
        out.append(bytes(data))
    return out


# What libtiff writes to stderr on each corrupted TIFF (CCITT G4, LZW, deflate), through Pillow.
LIBTIFF_COMPLAINTS = ("Fax4Decode: Bad code word", "Using code not yet in table", "ZIPDecode: Decoding error")


def test_json_log_stays_json_under_hostile_tiffs(spawn: Callable[..., ServerProcess]) -> None:
    """libtiff writes to file descriptor 2 itself: in JSON mode each of its lines must arrive as an
    `embedder.native` WARNING record, and nothing else may reach the stream."""
    server = spawn("--log-format", "json")
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        for data in corrupt_tiffs():
            code, details, _ = ask_stub(stub, data)
            assert code in (grpc.StatusCode.OK, INVALID), (code, details)

    def native_messages() -> list[str]:
        return [
            record["message"]
            for line in server.log().splitlines()
            if line.startswith("{") and (record := json.loads(line)).get("logger") == "embedder.native"
        ]

    # The lines cross a pipe and a pump thread: wait for them before stopping the process.
    waited = time.monotonic() + 30.0
    while time.monotonic() < waited and len(native_messages()) < len(LIBTIFF_COMPLAINTS):
        time.sleep(0.1)
    server.stop()
    not_json, native = [], []
    for line in server.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            not_json.append(line)
            continue
        if record.get("logger") == "embedder.native":
            native.append(record)
    assert not not_json, not_json
    assert all(record["level"] == "WARNING" for record in native), native
    for complaint in LIBTIFF_COMPLAINTS:
        assert any(complaint in record["message"] for record in native), (complaint, native)
