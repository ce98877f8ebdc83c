"""The agent's wire format, both sides in one place: the upload archive a client packs and the agent unpacks.

An upload is a zip archive: ``manifest.json`` (version 1: the models with their role,
format, runtime and precision, the inputs, threads and timing protocol), each model under
its member name, and each input as a ``.npy`` array. The agent only looks names up, never
uses them as paths, and refuses members that inflate past its limit.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np

from edgeprune.device import runtimes
from edgeprune.device.decoders import (
    DECODER_FILES,
    DecoderRefused,
    check_decoder,
    parse_generation,
    write_decoder,
)
from edgeprune.timing import Protocol
from edgeprune.uploads import UploadModel

TOKEN_ENV = "EDGEPRUNE_AGENT_TOKEN"
MIN_TOKEN_LENGTH = 16
API = "/v1"
MAX_MODELS = 4
MAX_INPUTS = 16
MAX_MEMBERS = 64
# The files a Core ML package holds; anything else in an uploaded package is refused.
MLPACKAGE_FILES = ("Manifest.json", "Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin")
ROLE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
RUNTIMES = {"onnx": ("onnxruntime", "tensorrt"), "mlpackage": ("coreml",), "engine": ("tensorrt",),
            "decoder": ("onnxruntime",)}
PROTOCOL_BOUNDS = {"warmup_s": (0.0, 10.0), "round_s": (0.01, 5.0), "min_rounds": (1, 50),
                    "max_rounds": (1, 100), "min_runs_per_round": (1, 1000), "tolerance": (0.001, 0.5)}


class RequestError(Exception):
    """A request the agent refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}



@dataclass(frozen=True)
class UploadedModel:
    role: str
    format: str
    runtime: str
    precision: str
    files: dict[str, bytes]  # our own relative name -> bytes


@dataclass(frozen=True)
class Job:
    models: list[UploadedModel]
    inputs: list[np.ndarray]
    threads: int | None
    protocol: Protocol
    generation: dict | None = None  # decoders: {prompt, gen, repeats}, timed by the agent's generation loop



def pack_upload(models: Sequence[UploadModel], inputs: Sequence[np.ndarray], threads: int | None = None,
                protocol: Protocol | None = None, generation: dict | None = None) -> bytes:
    """Returns the zip archive the agent's /v1/measure takes (``generation``: decoders, {prompt, gen, repeats})."""
    buf = io.BytesIO()
    manifest: dict = {"version": 1, "models": [], "inputs": [], "threads": threads}
    if protocol is not None:
        manifest["protocol"] = asdict(protocol)
    if generation is not None:
        manifest["generation"] = generation
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for model in models:
            member = f"{model.role}.{model.format}"
            spec = {"role": model.role, "format": model.format, "member": member, "precision": model.precision}
            if model.runtime:
                spec["runtime"] = model.runtime
            manifest["models"].append(spec)
            if model.format == "mlpackage":
                for f in sorted(p for p in model.path.rglob("*") if p.is_file()):
                    zf.write(f, f"{member}/{f.relative_to(model.path).as_posix()}")
            elif model.format == "decoder":
                for name in DECODER_FILES:
                    zf.write(model.path / name, f"{member}/{name}")
            else:
                zf.write(model.path, member)
        for i, array in enumerate(inputs):
            npy = io.BytesIO()
            np.save(npy, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(f"input_{i}.npy", npy.getvalue())
            manifest["inputs"].append(f"input_{i}.npy")
        zf.writestr("manifest.json", json.dumps(manifest))
    return buf.getvalue()


def write_model(folder: Path, model: UploadedModel) -> Path:
    """Returns the path of the model written under the agent's own names."""
    if model.format == "decoder":
        return write_decoder(folder, model.files)
    folder.mkdir()
    if model.format == "mlpackage":
        root = folder / "model.mlpackage"
        for rel, data in model.files.items():
            target = root / rel  # rel is one of MLPACKAGE_FILES, never a client's string
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return root
    path = folder / ("model.onnx" if model.format == "onnx" else "model.engine")
    path.write_bytes(model.files["model"])
    return path


def _read_member(zf: zipfile.ZipFile, name: str, budget: list[int]) -> bytes:
    """Returns one archive member, refusing members that inflate past the remaining budget."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the archive has no member named in the manifest ({name[:80]!r})") from None
    if info.file_size > budget[0]:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the upload unpacks past the agent's size limit")
    with zf.open(info) as f:
        # Read one byte past the declared size: a lying header must not inflate unchecked.
        data = f.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise RequestError(HTTPStatus.BAD_REQUEST, "an archive member is larger than its header says")
    budget[0] -= len(data)
    return data


def _protocol(spec: object) -> Protocol:
    if spec is None:
        return Protocol()
    if not isinstance(spec, dict) or set(spec) - set(PROTOCOL_BOUNDS):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"manifest 'protocol' takes only {', '.join(PROTOCOL_BOUNDS)}")
    values = {}
    for key, value in spec.items():
        lo, hi = PROTOCOL_BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"manifest protocol.{key} must be a number in [{lo}, {hi}]")
        values[key] = type(lo)(value) if isinstance(lo, int) else float(value)
    return Protocol(**values)


def parse_upload(body: bytes, max_unpacked: int) -> Job:
    """Returns the job an upload describes; RequestError (400/413) for anything malformed."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(body))
        members = zf.infolist()
        # Members inflate no further than their declared sizes, so bounding those bounds the work.
        if len(members) > MAX_MEMBERS or sum(m.file_size for m in members) > max_unpacked:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the upload unpacks past the agent's limit ({max_unpacked} bytes, {MAX_MEMBERS} files)")
        if zf.testzip() is not None:  # checks every member's CRC: a corrupted upload fails here
            raise zipfile.BadZipFile("a member's checksum does not match")
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, OSError, RuntimeError) as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the upload is not a valid zip archive ({type(exc).__name__})") from None
    budget = [max_unpacked]
    with zf:
        try:
            manifest = json.loads(_read_member(zf, "manifest.json", budget))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(HTTPStatus.BAD_REQUEST, "manifest.json is not valid JSON") from None
        if not isinstance(manifest, dict) or manifest.get("version") != 1:
            raise RequestError(HTTPStatus.BAD_REQUEST, "manifest.json must be an object with \"version\": 1")
        specs = manifest.get("models")
        if not isinstance(specs, list) or not 1 <= len(specs) <= MAX_MODELS:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"manifest 'models' must list 1 to {MAX_MODELS} models")
        models = [_parse_model(zf, spec, budget) for spec in specs]
        if len({m.role for m in models}) != len(models):
            raise RequestError(HTTPStatus.BAD_REQUEST, "manifest model roles must be unique")
        try:
            generation = parse_generation(manifest.get("generation"))
        except DecoderRefused as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        if (generation is not None) != all(m.format == "decoder" for m in models):
            raise RequestError(HTTPStatus.BAD_REQUEST, "decoders are timed by 'generation' and only decoders are: "
                                                       "upload them apart from other models")
        names = manifest.get("inputs")
        fewest = 0 if generation is not None else 1  # a decoder's inputs are the tokens the loop draws
        if not isinstance(names, list) or not fewest <= len(names) <= MAX_INPUTS or not all(isinstance(n, str) for n in names):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"manifest 'inputs' must list {fewest} to {MAX_INPUTS} .npy members")
        inputs = [_load_npy(_read_member(zf, n, budget)) for n in names]
    threads = manifest.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024):
        raise RequestError(HTTPStatus.BAD_REQUEST, "manifest 'threads' must be an integer from 1 to 1024 or null")
    return Job(models=models, inputs=inputs, threads=threads, protocol=_protocol(manifest.get("protocol")),
               generation=generation)


def _parse_model(zf: zipfile.ZipFile, spec: object, budget: list[int]) -> UploadedModel:
    if not isinstance(spec, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "each manifest model must be an object")
    role, fmt, member = spec.get("role"), spec.get("format"), spec.get("member")
    if not isinstance(role, str) or not ROLE.match(role):
        raise RequestError(HTTPStatus.BAD_REQUEST, "a model role must be 1-32 lowercase letters, digits, '-' or '_'")
    if fmt not in runtimes.FORMATS:
        raise RequestError(HTTPStatus.BAD_REQUEST,
                           f"{role}: format {str(fmt)[:40]!r} is not accepted; the agent runs "
                           f"{', '.join(runtimes.FORMATS)} files only (never pickled models)")
    runtime = spec.get("runtime") or RUNTIMES[fmt][0]
    if runtime not in RUNTIMES[fmt]:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{role}: format {fmt} runs with {' or '.join(RUNTIMES[fmt])}")
    precision = spec.get("precision") or "fp32"
    if precision not in ("fp32", "fp16", "int8", "int4"):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{role}: precision must be fp32, fp16, int8 or int4")
    if not isinstance(member, str) or not member:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{role}: 'member' must name an archive member")
    if fmt == "mlpackage":
        files = _folder_files(zf, member, MLPACKAGE_FILES, f"{role}: the Core ML package", budget)
        if MLPACKAGE_FILES[0] not in files:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{role}: the Core ML package has no Manifest.json")
        return UploadedModel(role, fmt, runtime, precision, files)
    if fmt == "decoder":
        files = _folder_files(zf, member, DECODER_FILES, f"{role}: the decoder", budget)
        try:
            check_decoder(files)
        except DecoderRefused as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{role}: {exc}") from None
        return UploadedModel(role, fmt, runtime, precision, files)
    data = _read_member(zf, member, budget)
    if fmt == "onnx":
        try:
            runtimes.check_onnx_bytes(data)
        except runtimes.BadArtifact as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{role}: {exc}") from None
    return UploadedModel(role, fmt, runtime, precision, {"model": data})


def _folder_files(zf: zipfile.ZipFile, member: str, allowed: tuple[str, ...], what: str,
                  budget: list[int]) -> dict[str, bytes]:
    """Returns the files under an archive folder by our own names; anything but ``allowed`` is refused."""
    prefix = member.rstrip("/") + "/"
    files = {}
    for info in zf.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        rel = info.filename[len(prefix):]
        if rel not in allowed:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{what} holds an unexpected file (allowed: {', '.join(allowed)})")
        files[allowed[allowed.index(rel)]] = _read_member(zf, info.filename, budget)  # our constant as the key
    return files


def _load_npy(data: bytes) -> np.ndarray:
    """Returns an uploaded input array; its header is checked against its bytes before anything is allocated."""
    try:
        buf = io.BytesIO(data)
        version = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(buf)
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, TokenError, ...
        raise RequestError(HTTPStatus.BAD_REQUEST, f"an input is not a valid .npy array ({type(exc).__name__})") from None
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise RequestError(HTTPStatus.BAD_REQUEST, "inputs must be numeric .npy arrays")
    count = 1
    for dim in shape:
        count *= int(dim)
    if count * dtype.itemsize != len(data) - buf.tell():
        raise RequestError(HTTPStatus.BAD_REQUEST, f"an input's header says {shape} {dtype} "
                                                   f"({count * dtype.itemsize} bytes) but {len(data) - buf.tell()} follow")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"an input is not a valid .npy array ({type(exc).__name__})") from None
    return array
