"""The report a researcher reads (`snakemake --report results/report.html`).

- `figures`: PNG charts (per-class IoU, training curves, the Table-2-style stage chart), each sized
  to fit the report's result pane (`MAX_WIDTH_PX` x `MAX_HEIGHT_PX`): Snakemake shows a PNG at its
  natural size, centred, and a larger one is cut off where it cannot be scrolled to.
- `gallery`: HTML pages of example images (Snakemake shows an HTML result in a scrolling frame):
  the label stages on training images, DeepLab on the val images the summary scores.
- `summary_page`: the summary as an HTML page, and the compact table the landing page shows.
- `html`: the page shell, tables, embedded images and the class legend they share.
- `browser`: headless Chromium (DOM and screenshots) for the report's layout checks.
"""
