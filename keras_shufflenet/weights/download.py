"""The weights cache: downloads checked against the hash the source
publishes, written so that a killed download or two processes at once
never leave a file that a later run takes for a good one.

`$KERAS_SHUFFLENET_HOME` holds the cache (default: `keras_shufflenet/` in
`$KERAS_HOME`, itself `~/.keras` by default): checkpoints as the sources
ship them in `checkpoints/`, converted Keras weights beside. A site
without internet access serves the files from a mirror
(`$KERAS_SHUFFLENET_WEIGHTS_MIRROR`, a URL prefix: `<mirror>/<filename>`);
the hash check still applies.
"""

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

HOME_VARIABLE = "KERAS_SHUFFLENET_HOME"
MIRROR_VARIABLE = "KERAS_SHUFFLENET_WEIGHTS_MIRROR"
CHECKPOINTS = "checkpoints"
CHUNK = 1 << 20
# A `.part` file older than this is a download that was killed.
STALE_SECONDS = 24 * 3600


class DownloadError(OSError):
    """A checkpoint could not be downloaded; the message says what to do."""


class HashMismatchError(ValueError):
    """A file's hash is not the one its source publishes."""


def weights_home():
    """The cache folder: `$KERAS_SHUFFLENET_HOME`, else `keras_shufflenet`
    in `$KERAS_HOME` (default `~/.keras`)."""
    home = os.environ.get(HOME_VARIABLE)
    if home:
        return home
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    return os.path.join(keras_home, "keras_shufflenet")


def checkpoint_path(entry):
    """Where `entry`'s checkpoint lives in the cache."""
    return os.path.join(weights_home(), CHECKPOINTS, entry.filename)


def file_digest(path, algorithm="sha256", member=None):
    """The hex digest of a file, or of one member of a zip file."""
    digest = hashlib.new(algorithm)
    with contextlib.ExitStack() as stack:
        if member is None:
            f = stack.enter_context(open(path, "rb"))
        else:
            archive = stack.enter_context(zipfile.ZipFile(path))
            f = stack.enter_context(archive.open(member))
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(entry, path, origin=None):
    """Checks a file against the hash its source publishes.

    A source that publishes a prefix of the digest (mmpretrain) is checked
    on that prefix, and on the full sha256 once the entry holds it.

    Raises:
        HashMismatchError: The file differs; the message names `origin`
            (or the file) and both hashes.
    """
    checks = []
    if entry.file_hash:
        checks.append((entry.hash_algorithm, entry.file_hash,
                       entry.hashed_member))
    if entry.sha256:
        checks.append(("sha256", entry.sha256, None))
    for algorithm, expected, member in checks:
        try:
            found = file_digest(path, algorithm, member)
        except (zipfile.BadZipFile, KeyError) as e:
            raise HashMismatchError(
                f"{origin or path} is not the file {entry.name!r} needs: it "
                f"holds no {member!r} to check ({type(e).__name__})."
            ) from e
        if not found.startswith(expected):
            what = f"{member!r} in " if member else ""
            raise HashMismatchError(
                f"The {algorithm} of {what}{origin or path} is {found}, but "
                f"its source publishes {expected} for {entry.name!r}: the "
                "file is damaged or not the published one."
            )


def _origin(entry):
    mirror = os.environ.get(MIRROR_VARIABLE)
    if mirror:
        return f"{mirror.rstrip('/')}/{entry.filename}"
    return entry.url


def _remove_stale_parts(folder, filename):
    now = time.time()
    for name in os.listdir(folder):
        if name.startswith(f".{filename}.") and name.endswith(".part"):
            path = os.path.join(folder, name)
            try:
                if now - os.path.getmtime(path) > STALE_SECONDS:
                    os.remove(path)
            except OSError:
                pass  # Another process removed it.


def _copy_with_progress(response, f, progress):
    total = int(response.headers.get("Content-Length") or 0)
    done = 0
    shown = -1
    for chunk in iter(lambda: response.read(CHUNK), b""):
        f.write(chunk)
        done += len(chunk)
        if progress and total:
            percent = 100 * done // total
            if percent // 10 != shown:
                shown = percent // 10
                print(f"\r  {done / 1e6:.1f} of {total / 1e6:.1f} MB "
                      f"({percent}%)", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr, flush=True)


def _not_downloadable(entry, path, origin, reason):
    return DownloadError(
        f"Could not download {entry.filename} for {entry.name!r} from "
        f"{origin} ({reason}). Download it by hand and put it at {path} "
        f"(folder {os.path.dirname(path)}), or set {MIRROR_VARIABLE} to a "
        "URL that serves the file."
    )


def fetch(entry, progress=True):
    """Returns the path of `entry`'s verified checkpoint, downloading it
    into the cache on first use.

    The download goes to a temporary file beside its final name, is
    checked against the source's hash, and only then renamed into place
    (atomically). A file already in the cache is checked too.

    Args:
        entry: A `registry.PretrainedEntry`.
        progress: Print the download's progress to stderr. Defaults to
            True.

    Returns:
        The checkpoint's path in the cache.

    Raises:
        DownloadError: No URL (a file to download by hand) or no network;
            the message names the URL, the file and the folder to put it.
        HashMismatchError: The downloaded (or cached) file is not the
            published one; it is removed and the message names the URL and
            both hashes.
    """
    path = checkpoint_path(entry)
    if os.path.isfile(path):
        try:
            verify(entry, path)
            return path
        except HashMismatchError:
            os.remove(path)
            raise
    origin = _origin(entry)
    if origin is None:
        raise DownloadError(
            f"{entry.name!r} is not downloaded by keras_shufflenet: its "
            f"source publishes it at {entry.page} only. Download "
            f"{entry.filename} there and put it at {path} (folder "
            f"{os.path.dirname(path)}); it is converted on first use."
        )
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    _remove_stale_parts(folder, entry.filename)
    fd, part = tempfile.mkstemp(
        prefix=f".{entry.filename}.", suffix=".part", dir=folder
    )
    try:
        if progress:
            print(f"Downloading {origin}", file=sys.stderr, flush=True)
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(
                origin, timeout=60
            ) as response:
                _copy_with_progress(response, f, progress)
        except (urllib.error.URLError, http.client.HTTPException,
                OSError) as e:
            raise _not_downloadable(entry, path, origin, e) from e
        verify(entry, part, origin)
        os.replace(part, path)
    finally:
        if os.path.exists(part):
            os.remove(part)
    return path
