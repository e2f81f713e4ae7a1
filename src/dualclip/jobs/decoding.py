"""Opening one image for a job: a fully decoded, upright PIL image, or the reason it cannot be used.

Jobs never stop on a bad file: zero-byte, missing, non-image, truncated and corrupt files come back as a reason
that the job lists in its failures file. Used by the dataset jobs and by `DualClipDataCollator`.
"""

from __future__ import annotations

import io
import os
import re
import warnings

import PIL.Image
import PIL.ImageOps

__all__ = ["load_image"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def load_image(image) -> tuple[PIL.Image.Image | None, str | None]:
    """`(image, None)` with every pixel decoded, or `(None, reason)`.

    `image`: a local path, the file's bytes, a file object, or a PIL image (decoded now, so a truncated file that
    PIL opened lazily fails here rather than in preprocessing).
    """
    try:
        if isinstance(image, PIL.Image.Image):
            image.load()
            return _upright(image), None
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            if _URL.match(path):
                return None, "is a URL: jobs read local files only"
            if not os.path.exists(path):
                return None, "file not found"
            if not os.path.isfile(path):
                return None, "not a regular file"
            if os.path.getsize(path) == 0:
                return None, "empty file (0 bytes)"
            opened = PIL.Image.open(path)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            if len(image) == 0:
                return None, "empty file (0 bytes)"
            opened = PIL.Image.open(io.BytesIO(image))
        elif image is None:
            return None, "no image"
        else:
            opened = PIL.Image.open(image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning and palette notes, per file
            opened.load()
        return _upright(opened), None
    except PIL.UnidentifiedImageError:
        return None, "not an image (PIL cannot identify the file)"
    except PIL.Image.DecompressionBombError as error:
        return None, f"too large: {error}"
    except OSError as error:
        return None, f"truncated or corrupt image: {error}"
    except Exception as error:  # PIL raises SyntaxError, ValueError, struct.error... on broken files
        return None, f"corrupt image: {type(error).__name__}: {error}"


def _upright(image: PIL.Image.Image) -> PIL.Image.Image:
    try:
        return PIL.ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block leaves the pixels usable as stored
        return image
