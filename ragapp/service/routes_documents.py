"""A collection's documents and uploaded files: list, upload (ingested by a background job), remove.

Upload names are checked before anything is written: a plain name that displays as it is, of a
supported type, within ingest.max_file_mb. One bad file refuses the whole upload.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile

from ragapp.app import App
from ragapp.connectors.filesystem import SUPPORTED_SUFFIXES
from ragapp.service import schemas as s
from ragapp.service.collections import UPLOADS
from ragapp.service.dependencies import AdminKey, CollectionApp, ServiceDep
from ragapp.service.http_errors import ApiError, error_responses
from ragapp.service.names import invisible_character
from ragapp.service.service import Service

router = APIRouter(tags=["collections"])


def plain_name(name: str) -> str:
    """`name` if it is a plain file name that displays as it is; traversal and oddities are refused (400)."""
    if not name:
        raise ApiError(400, "upload has an empty file name: send every file with its name")
    problem = invisible_character(name)
    if problem is not None:
        raise ApiError(400, f"upload name {name!r} {problem}: rename the file")
    if (
        name in (".", "..")
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or len(name.encode("utf-8", "surrogatepass")) > 255
    ):
        raise ApiError(400, f"upload name {name!r} is not a plain file name")
    return name


def upload_name(name: str) -> str:
    """An upload's name as given, if it is a plain supported file name (400, or 415 for the type)."""
    plain_name(name)
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        kinds = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise ApiError(415, f"{name}: unsupported file type {suffix or '(no extension)'!r} (supported: {kinds})")
    return name


@router.get("/v1/collections/{collection}/documents", response_model=s.DocumentList)
def list_documents(collection: str, app: CollectionApp) -> dict[str, Any]:
    """The documents of a collection, with their ids."""
    return {"collection": collection, "documents": app.documents()}


@router.post(
    "/v1/collections/{collection}/documents", response_model=s.Job, status_code=202, responses=error_responses(415)
)
def upload(
    collection: str,
    _: AdminKey,
    app: CollectionApp,
    service: ServiceDep,
    files: Annotated[list[UploadFile], File(description="Files to ingest")],
) -> dict[str, Any]:
    """Upload files (admin); they are ingested in the background: poll `GET /v1/jobs/{id}`.

    Every file is checked first (a plain name, a supported type, within ingest.max_file_mb); one bad file
    refuses the whole upload and nothing is written.
    """
    limit = int(app.config.ingest.max_file_mb * 1e6)
    names = [upload_name(f.filename or "") for f in files]
    if len(set(names)) != len(names):
        raise ApiError(400, "two uploaded files have the same name")
    for f, name in zip(files, names, strict=True):
        size = f.size if f.size is not None else len(f.file.read())
        if size > limit:
            raise ApiError(413, f"{name}: {size} bytes is over ingest.max_file_mb ({app.config.ingest.max_file_mb} MB)")
    job_id = service.jobs.new_id()
    staged = service.jobs.staging(collection, job_id)
    staged.mkdir(parents=True)
    try:
        for f, name in zip(files, names, strict=True):
            f.file.seek(0)
            with open(staged / name, "xb") as out:
                shutil.copyfileobj(f.file, out)
        return service.jobs.submit(job_id, collection, names)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


@router.delete("/v1/collections/{collection}/documents/{document_id}", response_model=s.Removed)
def delete_document(collection: str, document_id: int, _: AdminKey, app: CollectionApp) -> dict[str, Any]:
    """Remove a document from the collection's store and indexes (admin); an uploaded file is deleted too."""
    found = app.documents([document_id])
    if not found:
        raise ApiError(404, f"no document {document_id} in collection {collection!r}")
    report = app.remove_documents([document_id])
    source = Path(found[0]["source"])
    if source.parent == (app.workspace / "uploads").resolve():
        source.unlink(missing_ok=True)
    return {"removed": report.removed, "chunks_removed": report.chunks_removed}


def uploaded(service: Service, app: App, collection: str) -> list[dict[str, Any]]:
    """Each uploaded file with its state: ingested (its document id), pending, or failed with the reason."""
    folder = service.collections.folder(collection) / UPLOADS
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    documents = {d["source"]: d["id"] for d in app.documents()} if files else {}
    outcomes = service.jobs.outcomes(collection) if files else {}
    out = []
    for path in files:
        document_id = documents.get(str(path.resolve()))
        outcome = outcomes.get(path.name, {})
        if document_id is not None:
            status, reason = "ingested", None
        elif outcome.get("status") in ("queued", "running"):
            status, reason = "pending", None
        else:
            status = "failed"
            reason = outcome.get("reason") or "not ingested (no upload job records why): upload it again"
        size = path.stat().st_size
        out.append(
            {
                "name": path.name,
                "size": size,
                "status": status,
                "document_id": document_id,
                "job_id": outcome.get("job_id"),
                "reason": reason,
            }
        )
    return out


@router.get("/v1/collections/{collection}/uploads", response_model=s.UploadList)
def list_uploads(collection: str, app: CollectionApp, service: ServiceDep) -> dict[str, Any]:
    """The uploaded files of a collection: ingested (with the document id), pending, or failed with the reason."""
    return {"collection": collection, "uploads": uploaded(service, app, collection)}


@router.delete("/v1/collections/{collection}/uploads/{name}", response_model=s.UploadRemoved)
def delete_upload(collection: str, name: str, _: AdminKey, app: CollectionApp, service: ServiceDep) -> dict[str, Any]:
    """Delete an uploaded file (admin): one that failed to ingest, or an ingested one with its document."""
    plain_name(name)
    path = service.collections.folder(collection) / UPLOADS / name
    with service.jobs.moving:  # no job moves a file into uploads/ meanwhile
        if not path.is_file():
            raise ApiError(404, f"no uploaded file {name!r} in collection {collection!r}")
        if service.jobs.pending(collection, name):
            raise ApiError(409, f"{name}: an upload job with this file is queued or running; retry when it is done")
        source = str(path.resolve())
        ids = [d["id"] for d in app.documents() if d["source"] == source]
        report = app.remove_documents(ids) if ids else None
        path.unlink(missing_ok=True)
    return {
        "name": name,
        "removed": report.removed if report else 0,
        "chunks_removed": report.chunks_removed if report else 0,
    }
