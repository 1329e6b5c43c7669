#!/usr/bin/env python3
"""tests/html_check.py: the event browser (reports/events.html) as a reader meets it.

usage: html_check.py xml FILE                       well-formed XML (so well-formed HTML), an <html>
                                                    root, self-contained: nothing fetched
       html_check.py render FILE TRIGGER VARIANT    headless Chromium: the DOM after the script ran
                                                    shows TRIGGER marked in the first event, the
                                                    filter #variant=VARIANT hides the other variants,
                                                    and a screenshot is not blank

Prints one line per check; exits 0 (all good), 1 (a check failed) or 77 (cannot run:
Chromium missing), the reason on the last line.
"""
import html.parser
import os
import shutil
import subprocess
import sys
import tempfile
import xml.dom.minidom

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svg_check  # noqa: E402  (its PNG reader and Chromium finder)

SKIP = 77
FETCHING = ("link", "img", "iframe", "object", "embed", "audio", "video", "source", "image", "use")


def check_xml(path):
    doc = xml.dom.minidom.parse(path)
    root = doc.documentElement
    if root.tagName != "html":
        raise ValueError("root is <%s>, not <html>" % root.tagName)
    for el in doc.getElementsByTagName("*"):
        if el.tagName in FETCHING:
            raise ValueError("<%s> would fetch something" % el.tagName)
        for attr in ("src", "href", "xlink:href", "action"):
            v = el.getAttribute(attr)
            if v and not v.startswith("#"):
                raise ValueError("<%s %s=%r> points outside the page" % (el.tagName, attr, v))
    for style in doc.getElementsByTagName("style"):
        text = "".join(n.data for n in style.childNodes)
        if "url(" in text or "@import" in text:
            raise ValueError("the stylesheet fetches something")
    events = [d for d in doc.getElementsByTagName("div") if d.getAttribute("class") == "event"]
    return len(events)


class EventDom(html.parser.HTMLParser):
    """The events of a dumped DOM: data-variant, hidden, and the text of each <mark class=trigger>."""

    def __init__(self):
        super().__init__()
        self.events, self.depth, self.in_mark = [], 0, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("class") == "event":
            self.events.append({"variant": a.get("data-variant"), "hidden": "hidden" in a, "trigger": ""})
        elif tag == "mark" and a.get("class") == "trigger" and self.events:
            self.in_mark = True

    def handle_endtag(self, tag):
        if tag == "mark":
            self.in_mark = False

    def handle_data(self, data):
        if self.in_mark and self.events and not self.events[-1]["trigger"]:
            self.events[-1]["trigger"] = data


def chromium_run(browser, args, url):
    profile = tempfile.mkdtemp(prefix="bt-chromium-")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           "--user-data-dir=" + profile] + args + [url]
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=90).stdout.decode("utf-8", "replace")
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def render(path, trigger, variant):
    browser = svg_check.chromium()
    if not browser:
        print("skip: chromium not found (Debian package chromium)")
        return SKIP
    url = "file://" + os.path.abspath(path)
    lines, bad = [], 0
    dom = EventDom()
    dom.feed(chromium_run(browser, ["--dump-dom"], url))
    first = dom.events[0] if dom.events else None
    ok = first is not None and not first["hidden"] and first["trigger"] == trigger
    lines.append(("ok   " if ok else "FAIL ") + "%d events in the DOM; the first shows %r marked" % (
        len(dom.events), first["trigger"] if first else None))
    bad += not ok
    dom = EventDom()
    dom.feed(chromium_run(browser, ["--dump-dom"], url + "#variant=" + variant))
    shown = [e for e in dom.events if not e["hidden"]]
    ok = shown and all(e["variant"] == variant for e in shown) and \
        len(shown) + sum(e["hidden"] for e in dom.events) == len(dom.events) and \
        (len(shown) < len(dom.events)) == any(e["variant"] != variant for e in dom.events)
    lines.append(("ok   " if ok else "FAIL ") + "#variant=%s shows %d of %d events, all of that variant" % (
        variant, len(shown), len(dom.events)))
    bad += not ok
    png = os.path.splitext(path)[0] + ".png"
    if os.path.exists(png):
        os.unlink(png)
    chromium_run(browser, ["--screenshot=" + os.path.abspath(png), "--window-size=1200,900"], url)
    try:
        w, h, rows = svg_check.read_png(png)
        counts = {}
        for row in rows:
            for px in row:
                counts[px] = counts.get(px, 0) + 1
        ink = 1 - counts.get((255, 255, 255), 0) / (w * h)
        ok = len(counts) > 8 and 0.01 < ink < 0.9
        lines.append(("ok   " if ok else "FAIL ") + "screenshot %dx%d: %d colours, %.1f%% ink" % (w, h, len(counts), 100 * ink))
    except (OSError, ValueError) as e:
        ok = False
        lines.append("FAIL screenshot: %s" % e)
    bad += not ok
    print("\n".join(lines))
    return 1 if bad else 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "xml":
        try:
            n = check_xml(argv[2])
            print("ok   %s: well-formed, self-contained, %d events" % (argv[2], n))
            return 0
        except Exception as e:  # expat's message names line and column
            print("FAIL %s: %s" % (argv[2], e))
            return 1
    if len(argv) == 5 and argv[1] == "render":
        return render(argv[2], argv[3], argv[4])
    print(__doc__.strip())
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
