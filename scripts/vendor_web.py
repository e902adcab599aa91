#!/usr/bin/env python
"""Re-create the JavaScript this repository ships so its HTML works with no network:

    python scripts/vendor_web.py          # needs npm and the npm registry; writes docs/vendor/

- ``docs/vendor/dvc_plots.html``: the HTML template of ``dvc plots show`` (the project default,
  ``plots.html_template`` in ``.dvc/config``) with vega, vega-lite and vega-embed inlined.  DVC's
  own page loads the three from a CDN, so offline it shows nothing.
- ``docs/vendor/mathjax/tex-svg-full.js``: MathJax for the book (``docs/book_src/conf.py``,
  ``mathjax_path``); the SVG output needs no font files and "-full" no extension loaded later.
- ``docs/vendor/LICENSES.md``: each package's version, license, npm integrity and license text.

The versions are pinned below with the registry's sha512 integrity: ``npm pack`` downloads each
tarball and the script refuses one whose integrity differs, so a re-run writes the same bytes.
Only this script needs npm; building the book or showing plots never does.
"""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "vendor"

# package -> (version, npm integrity, the files used from its tarball)
PACKAGES = {
    "vega": ("5.33.1", "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
             ["build/vega.min.js"]),
    "vega-lite": ("5.23.0", "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
                  ["build/vega-lite.min.js"]),
    "vega-embed": ("6.29.0", "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
                   ["build/vega-embed.min.js"]),
    "mathjax": ("3.2.2", "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
                ["es5/tex-svg-full.js"]),
}

# DVC's own page (dvc_render.html.PAGE_HTML) with the scripts inlined.  It has no "{scripts}"
# placeholder on purpose: DVC fills that one with its CDN <script> tags.  "{plot_divs}" is where
# DVC puts one <div> per plot, each calling vegaEmbed(); "{refresh_tag}" is kept for --refresh.
TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- vega {vega}, vega-lite {vega_lite}, vega-embed {vega_embed} (BSD-3-Clause) inlined from the npm
         registry by scripts/vendor_web.py; licenses: LICENSES.md next to this file -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(tmp: Path) -> dict[str, tarfile.TarFile]:
    specs = [f"{name}@{version}" for name, (version, _, _) in PACKAGES.items()]
    done = subprocess.run(["npm", "pack", *specs, "--json", "--pack-destination", str(tmp)],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: npm pack failed: {done.stderr.strip().splitlines()[-1:]}")
    tars = {}
    for entry in json.loads(done.stdout):
        name = entry["name"]
        version, integrity, _ = PACKAGES[name]
        data = (tmp / entry["filename"]).read_bytes()
        if sri(data) != integrity or entry["version"] != version:
            sys.exit(f"error: {name}@{entry['version']} has integrity {sri(data)}, pinned {integrity}")
        tars[name] = tarfile.open(tmp / entry["filename"])
    return tars


def member(tar: tarfile.TarFile, path: str) -> bytes:
    return tar.extractfile(f"package/{path}").read()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tars = fetch(Path(tmp))
        files = {name: {p: member(tars[name], p) for p in PACKAGES[name][2]} for name in PACKAGES}
        declared = {name: json.loads(member(tars[name], "package.json"))["license"] for name in PACKAGES}
        licenses = {name: member(tars[name], "LICENSE").decode() if "package/LICENSE" in tars[name].getnames()
                    else None for name in PACKAGES}

    scripts = []
    for name in ("vega", "vega-lite", "vega-embed"):
        (js,) = files[name].values()
        text = js.decode()
        # an inline script ends at the first "</script"; and DVC replaces "{plot_divs}" etc. anywhere
        for bad in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
            if bad in text:
                sys.exit(f"error: {name}'s bundle contains {bad!r}: it cannot be inlined as is")
        scripts.append(f"    <script>/* {name} {PACKAGES[name][0]} */\n{text}\n    </script>")
    OUT.mkdir(parents=True, exist_ok=True)
    page = TEMPLATE.format(vega=PACKAGES["vega"][0], vega_lite=PACKAGES["vega-lite"][0],
                           vega_embed=PACKAGES["vega-embed"][0], scripts="\n".join(scripts))
    (OUT / "dvc_plots.html").write_text(page, encoding="utf-8")
    (OUT / "mathjax").mkdir(exist_ok=True)
    (OUT / "mathjax" / "tex-svg-full.js").write_bytes(files["mathjax"]["es5/tex-svg-full.js"])

    rows, texts = [], []
    for name, (version, integrity, used) in PACKAGES.items():
        where = "dvc_plots.html (inlined)" if name.startswith("vega") else "mathjax/tex-svg-full.js"
        digests = ", ".join(f"`{p}` sha256 `{hashlib.sha256(files[name][p]).hexdigest()[:16]}…`" for p in used)
        rows.append(f"| {name} | {version} | {declared[name]} | {where} | {digests} | `{integrity}` |")
        text = licenses[name] or (f"(the npm tarball holds no LICENSE file; its package.json declares "
                                  f"{declared[name]}, the license of the vega repository (University of Washington Interactive Data Lab, the authors of vega-lite, whose text is below))")
        texts.append(f"## {name} {version}\n\n```\n{text.strip()}\n```\n")
    (OUT / "LICENSES.md").write_text(
        "# Third-party JavaScript shipped in docs/vendor/\n\n"
        "Written by `scripts/vendor_web.py` from the npm registry (versions and integrity pinned there).\n"
        "vega-embed's bundle includes its own dependencies: vega-themes, vega-tooltip, vega-interpreter and\n"
        "vega-schema-url-parser (BSD-3-Clause, same authors), fast-json-patch and json-stringify-pretty-compact\n"
        "(MIT), semver (ISC), tslib (0BSD).\n\n"
        "| package | version | license | file here | file used (sha256) | npm integrity |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + "\n".join(texts), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}/: dvc_plots.html, mathjax/tex-svg-full.js, LICENSES.md")


if __name__ == "__main__":
    main()
