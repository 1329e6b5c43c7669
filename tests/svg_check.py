#!/usr/bin/env python3
"""tests/svg_check.py: check figures as a reader meets them.

usage: svg_check.py xml FILE.svg...      well-formed XML, an <svg> root with width/height,
                                         self-contained (no script, no links, no external fonts)
       svg_check.py render FILE.svg...   render each in headless Chromium to FILE.png, then check
                                         the PNG: the SVG's size, not blank, the colours of its
                                         bars and lines visible

Prints one line per file and exits 0 (all good), 1 (a check failed) or 77 (cannot run:
Chromium missing), the reason on the last line.
"""
import concurrent.futures
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.dom.minidom
import zlib

SKIP = 77
EXTERNAL = re.compile(r"<script|href\s*=|url\(|@import|@font-face|<image|<foreignObject", re.I)


def check_xml(path):
    """Returns (width, height) of a well-formed, self-contained SVG; raises ValueError."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        doc = xml.dom.minidom.parseString(data)
    except Exception as e:  # expat's message names line and column
        raise ValueError("not well-formed XML: %s" % e)
    root = doc.documentElement
    if root.tagName != "svg" or root.getAttribute("xmlns") != "http://www.w3.org/2000/svg":
        raise ValueError("root is not an SVG element")
    if root.getAttribute("version") != "1.1":
        raise ValueError("not SVG 1.1")
    if not doc.getElementsByTagName("title"):
        raise ValueError("no <title>")
    m = EXTERNAL.search(data.decode("utf-8"))
    if m:
        raise ValueError("not self-contained: %r" % m.group(0))
    return int(root.getAttribute("width")), int(root.getAttribute("height"))


def data_colours(path):
    """Colours of the bars and full-opacity lines: each must show up in the picture."""
    doc = xml.dom.minidom.parse(path)
    colours = set()
    for r in doc.getElementsByTagName("rect"):
        if r.getAttribute("class") == "bar":
            colours.add(r.getAttribute("fill"))
    for c in doc.getElementsByTagName("circle"):
        if c.getAttribute("class") == "pt" and c.getAttribute("fill-opacity") in ("", "1.00"):
            colours.add(c.getAttribute("fill"))
    return sorted(colours)


def read_png(path):
    """(width, height, rows of RGB tuples) of an 8-bit RGB or RGBA non-interlaced PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, head = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, colour, _, _, interlace = head
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError("PNG form not handled: depth %d colour type %d interlace %d" % (depth, colour, interlace))
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        filt, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # undo the row filter (PNG spec section 9)
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if filt == 1: line[i] = (line[i] + a) & 255
            elif filt == 2: line[i] = (line[i] + b) & 255
            elif filt == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return w, h, rows


def check_png(png, want_w, want_h, colours):
    w, h, rows = read_png(png)
    if (w, h) != (want_w, want_h):
        raise ValueError("PNG is %dx%d, the SVG %dx%d" % (w, h, want_w, want_h))
    counts = {}
    for row in rows:
        for px in row:
            counts[px] = counts.get(px, 0) + 1
    ink = 1 - counts.get((255, 255, 255), 0) / (w * h)
    if len(counts) < 2 or ink < 0.005:
        raise ValueError("blank: %d colours, %.2f%% not white" % (len(counts), 100 * ink))
    if ink > 0.9:
        raise ValueError("%.0f%% of the picture is not white" % (100 * ink))
    for c in colours:
        rgb = tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))
        if counts.get(rgb, 0) < 5:
            raise ValueError("colour %s of the data is not visible" % c)
    return ink, len(counts)


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def render(browser, svg):
    """Renders svg next to itself as .png and checks the picture; returns the line to print."""
    try:
        w, h = check_xml(svg)
        png = svg[:-4] + ".png"
        if os.path.exists(png):
            os.unlink(png)
        profile = tempfile.mkdtemp(prefix="bt-chromium-")
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", "--user-data-dir=" + profile, "--screenshot=" + os.path.abspath(png),
               "--window-size=%d,%d" % (w, h), "file://" + os.path.abspath(svg)]
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        finally:
            shutil.rmtree(profile, ignore_errors=True)
        if not os.path.exists(png):
            raise ValueError("chromium wrote no PNG (exit %d): %s" % (r.returncode, r.stdout.decode()[-300:]))
        ink, n_colours = check_png(png, w, h, data_colours(svg))
        return "ok   %s: %dx%d, %.1f%% ink, %d colours" % (png, w, h, 100 * ink, n_colours)
    except (ValueError, OSError, subprocess.TimeoutExpired) as e:
        return "FAIL %s: %s" % (svg, e)


def main(argv):
    if len(argv) < 3 or argv[1] not in ("xml", "render"):
        print(__doc__.strip())
        return 2
    mode, files = argv[1], argv[2:]
    if mode == "xml":
        lines = []
        for svg in files:
            try:
                lines.append("ok   %s: %dx%d" % ((svg,) + check_xml(svg)))
            except (ValueError, OSError) as e:
                lines.append("FAIL %s: %s" % (svg, e))
    else:
        browser = chromium()
        if not browser:
            print("skip: chromium not found (Debian package chromium)")
            return SKIP
        # One Chromium per figure, a few at once: start-up and PNG decoding dominate.
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            lines = list(pool.map(render, [browser] * len(files), files))
    for line in lines:
        print(line)
    return 1 if any(line.startswith("FAIL") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
