"""Where stores and servers are: checks of locations without opening them (opening a store creates it).

:func:`check_storage_url` (an Optuna storage), :func:`check_tracking_uri` (an MLflow tracking store) and
:func:`check_host` (an Ollama server URL) each raise a one-line :class:`ConfigError` naming the location
(credentials redacted) and the fix; :func:`resolve_stores` picks the tracking URI and storage a command uses.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.errors import ConfigError, did_you_mean, redact_url

__all__ = ["check_host", "check_storage_url", "check_tracking_uri", "default_storage", "resolve_stores",
           "resolve_tracking_uri", "sqlite_folder"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(explicit: str | None, configured: str | None) -> str:
    """Command line, then ``MLFLOW_TRACKING_URI``, then the config file, then ``sqlite:///mlflow.db``."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_TRACKING_URI


def sqlite_folder(uri: str) -> Path | None:
    """The folder of a ``sqlite:///`` database file, or None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).resolve().parent


def resolve_stores(explicit_uri: str | None, configured_uri: str | None, storage: str | None, *,
                   configured_in: str | None, storage_where: str, existing: bool = False) -> tuple[str, str]:
    """The MLflow tracking URI and the Optuna storage URL a command uses, checked without opening either.

    Returns:
        The tracking URI (command line, ``MLFLOW_TRACKING_URI``, config, default) and the storage URL (given, else
        :func:`default_storage`).

    Raises:
        ConfigError: either is unusable (``existing``: the storage file must already be there).
    """
    uri = resolve_tracking_uri(explicit_uri, configured_uri)
    if explicit_uri:
        source = "--tracking-uri"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        source = "MLFLOW_TRACKING_URI"
    else:
        source = f"{configured_in} (tracking)" if configured_uri and configured_in else "default"
    check_tracking_uri(uri, source)
    storage = storage or default_storage(uri)
    check_storage_url(storage, storage_where, existing=existing)
    return uri, storage


def default_storage(tracking_uri: str) -> str:
    """The Optuna storage next to a sqlite MLflow store (else in the current folder)."""
    folder = sqlite_folder(tracking_uri) or Path.cwd()
    return f"sqlite:///{folder / 'optuna.db'}"


# Optuna's journal file storage, as pipeline.search.storage opens it: journal://<path>, so journal:///abs/study.log.
_JOURNAL = "journal://"
_STORAGE_EXAMPLES = "sqlite:///optuna.db, journal:///path/to/study.log or postgresql://user@host/db"


def check_storage_url(url: str, where: str, *, existing: bool = False) -> None:
    """Check an Optuna storage URL without opening it (opening a sqlite or journal storage creates its file).

    ``existing`` is for commands that only read a study (compare, promote): the storage file must be there.

    Raises:
        ConfigError: one line naming ``where``, the URL (credentials redacted) and the fix: empty, not a URL, an
            unknown scheme, a database driver that is not installed, an in-memory database (nothing would be
            kept), a folder that does not exist, a folder where the file should be, or a missing file.
    """
    spot = f"{where}: Optuna storage URL {redact_url(url)!r}"
    if not url.strip():
        raise ConfigError(f"{where}: the Optuna storage URL is empty; leave it out for the default (optuna.db next "
                          f"to the MLflow store) or give one, e.g. {_STORAGE_EXAMPLES}")
    if url.startswith(_JOURNAL):
        if not url[len(_JOURNAL):]:
            raise ConfigError(f"{spot} names no file; use journal:///path/to/study.log")
        _check_store_file(url[len(_JOURNAL):], spot, existing=existing, example="journal:///path/to/study.log")
        return
    backend, database = _database_url(url, spot, _STORAGE_EXAMPLES, known=("sqlite", "postgresql", "mysql",
                                                                            "journal"))
    if backend == "sqlite":
        _check_store_file(database, spot, existing=existing, example="sqlite:///optuna.db")


def check_tracking_uri(uri: str, where: str | None = None) -> None:
    """Check an MLflow tracking URI without opening it (opening a store creates it).

    ``where`` says where the URI came from (a config file, ``--tracking-uri``, ``MLFLOW_TRACKING_URI``).

    Raises:
        ConfigError: one line naming the URI (credentials redacted) and the fix: empty, an unknown scheme, a
            database driver that is not installed, an in-memory database, a local folder or sqlite file whose
            folder does not exist, or an http(s) URI without a host.
    """
    spot = f"{where + ': ' if where else ''}MLflow tracking URI {redact_url(uri)!r}"
    examples = "sqlite:///mlflow.db, a folder such as ./mlruns, or http://HOST:PORT of an MLflow server"
    if not uri.strip():
        raise ConfigError(f"{spot} is empty; leave it out for the default (sqlite:///mlflow.db) or give one, "
                          f"e.g. {examples}")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ConfigError(f"{spot} is not a URI ({exc}); use {examples}") from exc
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):  # a folder: MLflow's file store
        folder = parts.path if scheme == "file" else uri
        _check_store_file(folder, spot, existing=False, example="./mlruns", folder=True)
    elif scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"{spot} has no host; use {scheme}://HOST:PORT of an MLflow server")
    elif scheme.split("+")[0] in _MLFLOW_DATABASES:
        backend, database = _database_url(uri, spot, "sqlite:///mlflow.db or postgresql://user@host/db",
                                          known=_MLFLOW_DATABASES)
        if backend == "sqlite":
            _check_store_file(database, spot, existing=False, example="sqlite:///mlflow.db")
    elif scheme not in _MLFLOW_REMOTE and scheme not in _tracking_plugins():
        raise ConfigError(f"{spot} has an unknown scheme {scheme!r}."
                          f"{did_you_mean(scheme, ('sqlite', 'file', 'http', 'https', *_MLFLOW_DATABASES))} "
                          f"Use {examples}")


_MLFLOW_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # mlflow.store.db.db_types.DATABASE_ENGINES
_MLFLOW_REMOTE = ("databricks", "databricks-uc", "uc")


def _tracking_plugins() -> set[str]:
    # Schemes that MLflow plugins register as tracking stores.
    return {entry.name for entry in entry_points(group="mlflow.tracking_store")}


def _database_url(url: str, spot: str, examples: str, *, known: tuple[str, ...]) -> tuple[str, str | None]:
    """The backend name and database of a SQLAlchemy URL whose dialect and driver can be loaded."""
    # Imported here: SQLAlchemy is only needed when a URL is checked, and it is slow to import.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"{spot} is not a URL; use {examples}") from exc
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError as exc:
        raise ConfigError(f"{spot} has an unknown scheme {parsed.drivername!r}."
                          f"{did_you_mean(parsed.drivername, known)} Use {examples}") from exc
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ConfigError(f"{spot} needs a database driver that is not installed ({exc}); pip install it, or use "
                          "a sqlite:/// file") from exc
    return parsed.get_backend_name(), parsed.database


def _check_store_file(path_text: str | None, spot: str, *, existing: bool, example: str,
                      folder: bool = False) -> None:
    """A store kept in a local file (or folder): in a folder that exists, and not the wrong kind of entry."""
    kind = "folder" if folder else "file"
    if not path_text or path_text == ":memory:" or "mode=memory" in path_text:
        raise ConfigError(f"{spot} is an in-memory database, so nothing would be kept; name a {kind}, e.g. {example}")
    if path_text.startswith("file:"):
        return  # SQLite's own URI form (uri=true): SQLite reads the options, the path is the user's
    if "\x00" in path_text:
        raise ConfigError(f"{spot} contains a NUL character; remove it")
    path = Path(path_text)
    if path.exists() and path.is_dir() != folder:
        found = "folder" if path.is_dir() else "file"
        raise ConfigError(f"{spot} names a {found}, not a {kind}; name a {kind}, e.g. {example}")
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir():
        raise ConfigError(f"{spot}: folder {parent} not found; create it first or put the {kind} in an existing "
                          "folder")
    if existing and not path.exists():
        raise ConfigError(f"{spot}: {os.path.abspath(path)} not found; run `pipeline study` first, or pass the "
                          "storage the study was run with (--storage)")


def check_host(value: str, where: str) -> None:
    """An Ollama host as the ``ollama`` client reads it: ``[http[s]://]host[:port][/path]``."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "http", value
    spot = f"{where}: 'host' {redact_url(value)!r}"
    if not value.strip():
        raise ConfigError(f"{spot} is empty; leave it out for the default ($OLLAMA_HOST, else "
                          "http://127.0.0.1:11434) or give http://HOST:PORT")
    if scheme not in ("http", "https"):
        raise ConfigError(f"{spot} must start with http:// or https://, e.g. http://127.0.0.1:11434")
    try:
        urlsplit(f"{scheme}://{rest}").port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ConfigError(f"{spot} is not a server URL ({exc}); use http://HOST:PORT, e.g. "
                          "http://127.0.0.1:11434") from exc
