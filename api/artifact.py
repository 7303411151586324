"""The on-disk format of `ember.save` / `ember.load`: a folder of data files and a manifest.

    manifest.json        format name and version, the ember and torch versions that wrote it, and the
                         size and sha256 of every other file (nothing else is trusted before these match)
    program.json         how a call maps onto the graph: input signature, weight names, outputs, donation
    graph.ir             the optimized IR graph as text (ir/printer.py; parsed back by ir/parser.py)
    autodiff.ir          a function's graph before the passes, with its gradient markers (detach, no_grad):
                         what a loaded function differentiates when an input requires grad (optional)
    schedule.json        the kernel groups and launch configs per target (runtime/schedule.py to_dict)
    weights.safetensors  parameters, buffers, closed-over tensors and lifted constants (no pickle)
    optimizer.safetensors  a training step's optimizer state tensors (moments, step counts)
    kernels/<target>/<name>.py  the Triton sources ember generated for contiguous inputs

Loading never executes anything the folder holds: the IR parser accepts literals only, kernels are
generated again from the parsed graph and schedule by ember's own emitters and must equal the stored
sources byte for byte (the stored ones are documentation and an integrity check, never imported),
extern calls must name registered torch operators, and tensors come from safetensors. The hashes catch
truncated, corrupted and hand-edited files (not a forger who rewrites the manifest too: that one is
stopped by the rules above, which keep a forged artifact a wrong program at worst, never foreign code).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from typing import Any

import torch

from ..ir import OPS, Graph
from ..ir.ops.extern import resolve_target

FORMAT = "ember.artifact"
# 2: a step's hyperparameters are a host-held input its kernels take by value (schedule "host")
FORMAT_VERSION = 2
MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """An artifact that cannot be loaded: missing, truncated, edited, or of another format version."""


def ember_version() -> str:
    from .. import __version__  # (the package's, read at call time: no import cycle)

    return __version__


def safetensors_torch():
    """`safetensors.torch` (the optional extra `ember[save]`), with a clear error when missing."""
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("ember.save / ember.load keep tensors in safetensors files: pip install safetensors "
                          "(or ember[save])") from None
    return safetensors.torch


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- writing --------------------------------------------------------------------------------------
def write_folder(path: str, files: dict[str, bytes], kind: str) -> None:
    """Write `files` and their manifest into the folder `path`, atomically: a temporary sibling folder
    renamed into place, so a reader never sees half an artifact. An existing artifact is replaced
    (moved aside first); any other existing path is refused."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isfile(os.path.join(path, MANIFEST)):
        raise FileExistsError(f"ember.save: {path} exists and is not an ember artifact; not overwriting it")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "ember": ember_version(),
                "torch": torch.__version__,
                "files": {name: {"bytes": len(data), "sha256": sha256(data)} for name, data in sorted(files.items())}}
    files = {**files, MANIFEST: json.dumps(manifest, indent=1).encode()}
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ember-save-", dir=parent)
    try:
        umask = os.umask(0o22)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # (mkdtemp's folder is 0700: the artifact gets a plain folder's mode)
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        old = None
        if os.path.exists(path):  # the old artifact moves aside, then the new one takes its name
            old = tempfile.mkdtemp(prefix=".ember-old-", dir=parent)
            os.replace(path, os.path.join(old, "artifact"))
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- reading --------------------------------------------------------------------------------------
def read_folder(path: str) -> tuple[dict, dict[str, bytes]]:
    """(manifest, {file: bytes}) after every check of the manifest; raises `ArtifactError` naming the
    file and what is wrong with it. Nothing of the artifact is interpreted before this returns."""
    where = os.path.join(path, MANIFEST)
    try:
        with open(where, "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise ArtifactError(f"ember.load: {path} is not an ember artifact ({MANIFEST} is missing)") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"ember.load: {where} is not valid JSON ({e}); the artifact is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"ember.load: {where} is not an ember artifact manifest (format {FORMAT!r} expected)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"ember.load: {path} has format version {version!r}, written by ember "
                            f"{manifest.get('ember')}; this ember ({ember_version()}) reads version {FORMAT_VERSION}. "
                            f"Save it again with this ember.")
    if manifest.get("ember") != ember_version():
        raise ArtifactError(f"ember.load: {path} was written by ember {manifest.get('ember')!r}, this is ember "
                            f"{ember_version()}: the IR and kernels may differ between versions. Save it again.")
    if str(manifest.get("torch", "")).split(".")[:2] != torch.__version__.split(".")[:2]:
        # the kernels are checked below; torch's own ops (extern calls) may differ between versions
        warnings.warn(f"ember.load: {path} was written with torch {manifest.get('torch')}, this is torch "
                      f"{torch.__version__}: operators ember calls in torch may behave differently", stacklevel=3)
    listed = manifest.get("files")
    if not isinstance(listed, dict) or manifest.get("kind") not in ("function", "step"):
        raise ArtifactError(f"ember.load: {where} lacks its file list or kind; the artifact is damaged")
    files = {}
    for name, meta in listed.items():
        if not _safe_name(name):
            raise ArtifactError(f"ember.load: {where} lists a file outside the artifact: {name!r}")
        try:
            with open(os.path.join(path, name), "rb") as f:
                data = f.read()
        except OSError as e:
            raise ArtifactError(f"ember.load: {name} of {path} cannot be read ({e.strerror}); "
                                f"the artifact is incomplete") from None
        if len(data) != meta.get("bytes"):
            what = "truncated" if len(data) < meta.get("bytes", 0) else "longer than written"
            raise ArtifactError(f"ember.load: {name} of {path} is {what}: {len(data)} bytes, the manifest "
                                f"says {meta.get('bytes')}")
        if sha256(data) != meta.get("sha256"):
            raise ArtifactError(f"ember.load: {name} of {path} was modified: its sha256 differs from the "
                                f"manifest's (edited or corrupted)")
        files[name] = data
    return manifest, files


def _safe_name(name: str) -> bool:
    return (isinstance(name, str) and bool(name) and not os.path.isabs(name)
            and all(part not in ("", ".", "..") for part in name.split("/")) and name != MANIFEST)


def json_file(files: dict[str, bytes], name: str) -> Any:
    if name not in files:
        raise ArtifactError(f"ember.load: the artifact has no {name}")
    try:
        return json.loads(files[name])
    except ValueError as e:
        raise ArtifactError(f"ember.load: {name} is not valid JSON ({e})") from None


# -- what a loaded graph may contain -----------------------------------------------------------------
_WORD = re.compile(r"^([A-Za-z][\w\-]*)?$")  # an attribute string an emitter may spell into a kernel
_PART = re.compile(r"^[A-Za-z_]\w*$")


def check_graph(graph: Graph, where: str = "graph.ir") -> None:
    """Refuse what a kernel or extern call could turn into foreign code (before the verifier, whose type
    rules run extern targets on meta tensors): an extern target must be a registered torch operator
    overload (`ns.op.overload`, no dunder on the way), and attribute strings of other ops plain words."""
    for k, node in enumerate(graph.nodes):
        if node.op not in OPS:
            raise ArtifactError(f"ember.load: {where}, node {k}: op {node.op!r} is not registered in this process "
                                f"(an ember.custom_op: import the code that defines it before ember.load)")
        if node.op == "extern":
            target = node.attrs.get("target")
            parts = target.split(".") if isinstance(target, str) else []
            if len(parts) != 3 or not all(_PART.match(p) and not p.startswith("__") for p in parts):
                raise ArtifactError(f"ember.load: {where}, node {k}: extern target {target!r} is not a torch "
                                    f"operator name")
            try:
                op = resolve_target(target)
            except ValueError:
                raise ArtifactError(f"ember.load: {where}, node {k}: the torch operator {target!r} is not "
                                    f"registered in this process (a custom op: import the library that "
                                    f"defines it before ember.load)") from None
            if not isinstance(op, torch._ops.OpOverload):
                raise ArtifactError(f"ember.load: {where}, node {k}: {target!r} is not a torch operator overload")
            continue
        for s in _strings(node.attrs):
            if not _WORD.match(s):
                raise ArtifactError(f"ember.load: {where}, node {k} ({node.op}): attribute string {s!r} is "
                                    f"not a plain word")


def _strings(x: Any):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _strings(v)
