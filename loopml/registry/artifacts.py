"""The artifact root: where model directories live, chosen by URL (a local folder by default).

Artifacts are content-addressed (``models/<sha256 of the bundle manifest>``), written completely
before anything refers to them, and never overwritten. Every path, whether it comes from a user or
from the database, is resolved inside the root or refused. Non-local roots (``s3://``, ``gs://``,
``memory://`` …) go through fsspec and are fetched into a local cache before loading.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath

from loopml.errors import LoopmlError

DEFAULT_ROOT = ".loopml/artifacts"
COMPLETE = ".complete"  # the last file written to a remote artifact; its presence means "whole"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def artifacts_url(url: str | None = None) -> str:
    return url or os.environ.get("LOOPML_ARTIFACTS") or DEFAULT_ROOT


def bundle_digest(model_dir: Path) -> str:
    manifest = model_dir / "manifest.json"
    if not manifest.is_file():
        raise LoopmlError(f"not a loopml model directory (no manifest.json): {model_dir}")
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def check_relative(uri: str) -> str:
    """A relative artifact path with no way out of the root: no '..', no absolute path, plain names."""
    parts = PurePosixPath(uri).parts
    if not parts or PurePosixPath(uri).is_absolute() or any(not _SAFE.match(p) for p in parts):
        raise LoopmlError(f"artifact path {uri!r} is outside the artifact root")
    return str(PurePosixPath(*parts))


class ArtifactRoot:
    def __init__(self, url: str | None = None) -> None:
        self.url = artifacts_url(url)
        protocol = self.url.split("://", 1)[0] if "://" in self.url else "file"
        self.local = protocol == "file"
        if self.local:
            self.root = Path(self.url.removeprefix("file://")).expanduser().resolve()
        else:
            import fsspec

            self.fs, self.remote_root = fsspec.core.url_to_fs(self.url)
            self.cache = Path(os.environ.get("LOOPML_ARTIFACT_CACHE", ".loopml/artifact-cache")).resolve()

    @property
    def canonical(self) -> str:
        return str(self.root) if self.local else self.url

    def _local_path(self, uri: str) -> Path:
        path = (self.root / check_relative(uri)).resolve()
        if not path.is_relative_to(self.root):  # a symlink pointing out
            raise LoopmlError(f"artifact path {uri!r} is outside the artifact root")
        return path

    def put_model(self, model_dir: str | os.PathLike) -> str:
        """Copy a model directory in (once per content); returns its URI relative to the root."""
        model_dir = Path(model_dir).resolve()
        uri = f"models/{bundle_digest(model_dir)}"
        if self.local:
            final = self._local_path(uri)
            if final.exists():
                return uri
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".tmp-{uuid.uuid4().hex}")
            try:
                shutil.copytree(model_dir, tmp)
                try:
                    os.rename(tmp, final)
                except OSError:  # another process stored the same content first
                    if not final.exists():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return uri
        target = f"{self.remote_root.rstrip('/')}/{check_relative(uri)}"
        if not self.fs.exists(f"{target}/{COMPLETE}"):
            self.fs.put(str(model_dir), target, recursive=True)
            self.fs.pipe(f"{target}/{COMPLETE}", b"")
        return uri

    def fetch(self, uri: str) -> Path:
        """A local directory holding the artifact (downloaded into the cache when remote)."""
        if self.local:
            path = self._local_path(uri)
            if not path.is_dir():
                raise LoopmlError(f"artifact {uri} is missing from {self.root}")
            return path
        uri = check_relative(uri)
        source = f"{self.remote_root.rstrip('/')}/{uri}"
        if not self.fs.exists(f"{source}/{COMPLETE}"):
            raise LoopmlError(f"artifact {uri} is missing or incomplete in {self.url}")
        local = self.cache / hashlib.sha256(f"{self.url}/{uri}".encode()).hexdigest()[:32]
        if not local.is_dir():
            tmp = local.with_name(f".tmp-{uuid.uuid4().hex}")
            self.fs.get(source, str(tmp), recursive=True)
            try:
                os.rename(tmp, local)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        return local
