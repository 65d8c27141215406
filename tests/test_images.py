"""Image validation and normalisation (``gemma_local.images``): every bad-image case, every mode."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib
from pathlib import Path

import anyio
import pytest
from PIL import Image

from gemma_local.errors import ImageError, InvalidRequestError
from gemma_local.images import (
    ImagePolicy,
    aimage_from_base64,
    aimage_from_url_or_data,
    decode_base64,
    image_from_base64,
    image_from_path,
    image_from_url_or_data,
    load_image,
    parse_data_uri,
)
from gemma_local.settings import ServerSettings

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


def halves(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue: orientation mistakes show up as wrong colours."""
    img = Image.new("RGB", (width, height), RED)
    img.paste(BLUE, (width // 2, 0, width, height))
    return img


def decoded(part) -> Image.Image:
    img = Image.open(io.BytesIO(part.data))
    assert img.format == "PNG" and img.mode == "RGB"
    return img


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width × height whose pixel data is one compressed row: all header, no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def reason_of(excinfo: pytest.ExceptionInfo[ImageError]) -> str:
    return excinfo.value.reason


# --- bad images ----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"hello, this is text", b"\x00" * 64, b"BM", b"<html>nope</html>"])
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(ImageError) as info:
        load_image(data)
    assert reason_of(info) == "not_an_image"
    assert "not an image" in str(info.value)


@pytest.mark.parametrize(
    ("data", "name"),
    [(b"GIF89a", "GIF"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"RIFF\0\0\0\0WEBPVP8 ", "WebP")],
)
def test_bare_signature_is_truncated(data: bytes, name: str) -> None:
    with pytest.raises(ImageError) as info:
        load_image(data)
    assert reason_of(info) == "truncated"
    assert "truncated or corrupt" in str(info.value)
    if name != "WebP":  # Pillow's WebP opener fails with its own error, reported as it is
        assert f"starts like a {name} file" in str(info.value)


def test_empty_is_not_an_image() -> None:
    with pytest.raises(ImageError) as info:
        load_image(b"")
    assert reason_of(info) == "not_an_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated(fmt: str) -> None:
    noise = Image.effect_noise((128, 128), 64).convert("RGB")
    data = encode(noise, fmt)
    with pytest.raises(ImageError) as info:
        load_image(data[: len(data) // 2])
    assert reason_of(info) == "truncated"
    assert "truncated or corrupt" in str(info.value)


def test_decompression_bomb_header() -> None:
    # 100k × 100k = 10^10 pixels declared in 33 bytes: refused from the header, nothing decoded.
    with pytest.raises(ImageError) as info:
        load_image(png_header_only(100_000, 100_000))
    assert reason_of(info) == "too_many_pixels"


def test_too_many_pixels_checked_from_the_header() -> None:
    # 8000 × 8000 = 64 MP > the 50 MP default; the file has no pixel data, so only the header was read.
    with pytest.raises(ImageError) as info:
        load_image(png_header_only(8000, 8000))
    assert reason_of(info) == "too_many_pixels"
    assert "8000×8000" in str(info.value) and "50,000,000" in str(info.value)


def test_too_many_pixels_custom_limit() -> None:
    data = encode(halves(200, 100), "PNG")
    with pytest.raises(ImageError) as info:
        load_image(data, max_pixels=19_999)
    assert reason_of(info) == "too_many_pixels"
    assert decoded(load_image(data, max_pixels=20_000)).size == (200, 100)


def test_too_many_bytes() -> None:
    data = encode(halves(), "PNG")
    with pytest.raises(ImageError) as info:
        load_image(data, max_bytes=len(data) - 1)
    assert reason_of(info) == "too_large"
    assert f"{len(data):,} bytes" in str(info.value)
    load_image(data, max_bytes=len(data))


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (encode(halves(), "TIFF"), "TIFF"),
        (encode(halves(16, 16), "ICO"), "ICO"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b'  <svg width="10" height="10"><rect width="10" height="10"/></svg>', "SVG"),
    ],
)
def test_unsupported_format(data: bytes, name: str) -> None:
    with pytest.raises(ImageError) as info:
        load_image(data)
    assert reason_of(info) == "unsupported_format"
    assert str(info.value).startswith(f"{name} images are not supported")


def test_errors_are_invalid_requests_with_a_param() -> None:
    with pytest.raises(InvalidRequestError) as info:
        load_image(b"nope", param="messages[0].content[1]")
    assert isinstance(info.value, ImageError) and isinstance(info.value, ValueError)
    assert info.value.code == "invalid_image"
    assert info.value.param == "messages[0].content[1]"


# --- base64 and data URIs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("abc", "not valid base64"),  # bad padding
        ("ab!d", "not valid base64"),  # bad character
        ("iVBO-w0_", "URL-safe"),
        ("aGVsbG8=aGVsbG8=", "not valid base64"),  # padding in the middle
    ],
)
def test_bad_base64(text: str, hint: str) -> None:
    with pytest.raises(ImageError) as info:
        decode_base64(text)
    assert reason_of(info) == "bad_base64"
    assert hint in str(info.value)


def test_base64_ignores_line_wrapping() -> None:
    data = encode(halves(), "PNG")
    wrapped = "\n".join(base64.b64encode(data).decode()[i : i + 76] for i in range(0, 400, 76))
    wrapped += base64.b64encode(data).decode()[len(wrapped.replace("\n", "")) :]
    assert decode_base64(wrapped) == data


def test_base64_too_large_before_decoding() -> None:
    with pytest.raises(ImageError) as info:
        decode_base64("A" * 4000, max_bytes=1000)
    assert reason_of(info) == "too_large"


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("data:image/png;base64", "no comma"),
        ("data:text/plain;base64,aGVsbG8=", "must be an image type"),
        ("data:;base64,aGVsbG8=", "not none"),
        ("data:image/png,%89PNG", "must be base64-encoded"),
        ("data:image/png;charset=utf-8,abc", "must be base64-encoded"),
        ("data:image png;base64,aGVsbG8=", "must be an image type"),
    ],
)
def test_bad_data_uri(uri: str, hint: str) -> None:
    with pytest.raises(ImageError) as info:
        parse_data_uri(uri)
    assert reason_of(info) == "bad_data_uri"
    assert hint in str(info.value)


def test_data_uri_with_bad_base64() -> None:
    with pytest.raises(ImageError) as info:
        image_from_url_or_data("data:image/png;base64,@@@@")
    assert reason_of(info) == "bad_base64"


def test_data_uri_parsing() -> None:
    data = encode(halves(), "PNG")
    b64 = base64.b64encode(data).decode()
    assert parse_data_uri(f"data:image/png;base64,{b64}") == ("image/png", data)
    assert parse_data_uri(f"DATA:Image/PNG;name=cat.png;BASE64,{b64}") == ("image/png", data)


def test_data_uri_declared_type_is_not_trusted() -> None:
    # The declared type says JPEG, the bytes are PNG: the bytes win.
    data = encode(halves(), "PNG")
    part = image_from_url_or_data("data:image/jpeg;base64," + base64.b64encode(data).decode())
    assert decoded(part).getpixel((0, 0)) == RED


# --- normalisation -------------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encode(halves(40, 20), "JPEG", exif=exif.tobytes(), quality=95)
    img = decoded(load_image(data))
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, top  # the left (red) edge is now on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom
    assert "exif" not in img.info  # metadata is not carried over


def test_rgba_is_composited_on_white() -> None:
    img = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 255))
    img.putpixel((2, 0), (0, 0, 0, 128))
    out = decoded(load_image(encode(img, "PNG")))
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == RED
    assert out.getpixel((2, 0)) in ((127, 127, 127), (126, 126, 126), (128, 128, 128))


def test_la_and_palette_transparency_become_white() -> None:
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (0, 255))
    out = decoded(load_image(encode(la, "PNG")))
    assert [out.getpixel((x, 0)) for x in range(2)] == [WHITE, (0, 0, 0)]

    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    gif = encode(pal, "GIF", transparency=0)
    out = decoded(load_image(gif))
    assert [out.getpixel((x, 0)) for x in range(2)] == [WHITE, RED]


def test_animated_gif_takes_the_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(out.getvalue())).n_frames == 2
    img = decoded(load_image(out.getvalue()))
    assert img.getpixel((4, 4)) == RED


def test_animated_webp_takes_the_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), BLUE), Image.new("RGB", (8, 8), RED)]
    out = io.BytesIO()
    frames[0].save(out, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    img = decoded(load_image(out.getvalue()))
    assert img.getpixel((4, 4)) == BLUE


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    img = Image.new("I;16", (3, 1))
    for x, value in enumerate((0, 32768, 65535)):
        img.putpixel((x, 0), value)
    out = decoded(load_image(encode(img, "PNG")))
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_cmyk_jpeg_and_greyscale_become_rgb() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    red = decoded(load_image(encode(cmyk, "JPEG", quality=95))).getpixel((4, 4))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    grey = decoded(load_image(encode(Image.new("L", (8, 8), 77), "PNG")))
    assert grey.getpixel((0, 0)) == (77, 77, 77)
    bilevel = decoded(load_image(encode(Image.new("1", (8, 8), 1), "BMP")))
    assert bilevel.getpixel((0, 0)) == WHITE


def test_same_image_same_digest() -> None:
    png = encode(halves(), "PNG")
    first, second = load_image(png), load_image(png)
    assert first.digest == second.digest == hashlib.sha256(first.data).hexdigest()
    # The same pixels in another container normalise to the same bytes.
    assert load_image(encode(halves(), "BMP")).digest == first.digest
    assert load_image(encode(halves(), "WEBP", lossless=True)).digest == first.digest
    assert load_image(encode(halves(41, 20), "PNG")).digest != first.digest


def test_mpo_takes_the_first_picture() -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    out = io.BytesIO()
    frames[0].save(out, format="MPO", save_all=True, append_images=frames[1:], quality=95)
    assert Image.open(io.BytesIO(out.getvalue())).format == "MPO"
    pixel = decoded(load_image(out.getvalue())).getpixel((4, 4))
    assert pixel[0] > 200 and pixel[2] < 60


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_accepted_formats(fmt: str) -> None:
    img = decoded(load_image(encode(halves(), fmt)))
    assert img.size == (40, 20)


# --- sources -------------------------------------------------------------------------------


def test_image_from_base64() -> None:
    data = encode(halves(), "PNG")
    part = image_from_base64(base64.b64encode(data).decode(), "image/png")
    assert part.digest == load_image(data).digest
    # Anthropic says webp, the bytes are PNG: accepted, the bytes win.
    assert image_from_base64(base64.b64encode(data).decode(), "image/webp").digest == part.digest
    with pytest.raises(ImageError) as info:
        image_from_base64(base64.b64encode(data).decode(), "application/pdf", param="messages.0.content.0")
    assert reason_of(info) == "unsupported_format" and info.value.param == "messages.0.content.0"


def test_policy_limits_apply_to_every_source(tmp_path: Path) -> None:
    data = encode(halves(), "PNG")
    small = ImagePolicy(max_bytes=len(data) - 1)
    b64 = base64.b64encode(data).decode()
    for call in (
        lambda: image_from_base64(b64, "image/png", small),
        lambda: image_from_url_or_data("data:image/png;base64," + b64, small),
        lambda: image_from_path(tmp_path / "x.png", small),
    ):
        (tmp_path / "x.png").write_bytes(data)
        with pytest.raises(ImageError) as info:
            call()
        assert reason_of(info) == "too_large"
    few_pixels = ImagePolicy(max_pixels=799)
    with pytest.raises(ImageError) as info:
        image_from_base64(b64, "image/png", few_pixels)
    assert reason_of(info) == "too_many_pixels"


def test_image_from_path(tmp_path: Path) -> None:
    file = tmp_path / "photo.jpg"  # the name lies: the bytes are PNG
    file.write_bytes(encode(halves(), "PNG"))
    assert decoded(image_from_path(file)).getpixel((0, 0)) == RED
    with pytest.raises(ImageError) as info:
        image_from_path(tmp_path / "missing.png")
    assert reason_of(info) == "not_found" and "missing.png" in str(info.value)
    with pytest.raises(ImageError) as info:
        image_from_path(tmp_path)
    assert reason_of(info) == "not_found"
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ImageError) as info:
        image_from_path(tmp_path / "notes.png")
    assert reason_of(info) == "not_an_image"


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.png", "/etc/passwd", "C:\\photo.png", "javascript:alert(1)", ""],
)
def test_only_http_and_data_urls(url: str) -> None:
    with pytest.raises(ImageError) as info:
        image_from_url_or_data(url, ImagePolicy())
    assert reason_of(info) == "bad_url"


def test_remote_urls_are_off_by_default() -> None:
    with pytest.raises(ImageError) as info:
        image_from_url_or_data("https://example.com/cat.png")
    assert reason_of(info) == "remote_images_disabled"
    assert "--allow-remote-images" in str(info.value) and "data:" in str(info.value)


def test_policy_from_settings() -> None:
    settings = ServerSettings(
        allow_remote_images=True, allowed_image_hosts=["Images.Internal"], max_image_bytes=4096, max_image_pixels=5000
    )
    policy = ImagePolicy.from_settings(settings)
    assert (policy.max_bytes, policy.max_pixels) == (4096, 5000)
    assert policy.remote.enabled and policy.remote.max_bytes == 4096
    assert policy.remote.host_allowed("images.internal")
    defaults = ImagePolicy.from_settings(ServerSettings())
    assert not defaults.remote.enabled and defaults.remote.allowed_hosts == frozenset()
    assert (defaults.max_bytes, defaults.max_pixels) == (20 * 1024 * 1024, 50_000_000)


def test_async_wrappers() -> None:
    data = encode(halves(), "PNG")
    b64 = base64.b64encode(data).decode()

    async def main() -> tuple[str, str]:
        a = await aimage_from_url_or_data("data:image/png;base64," + b64)
        b = await aimage_from_base64(b64, "image/png")
        return a.digest, b.digest

    first, second = anyio.run(main)
    assert first == second == load_image(data).digest
