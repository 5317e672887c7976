"""The results a user reads: provenance, the summary table, report pages and figures."""

from pcam.pipeline import trained_sections
from pcam.provenance import resolved_settings

FIGURES = f"{RESULTS}/figures"

# What `rule all` asks for from this file.
REPORT_TARGETS = [
    f"{RESULTS}/summary.csv",
    f"{FIGURES}/summary.html",
    *expand(
        f"{FIGURES}/{{experiment}}/{{figure}}",
        experiment=RUN,
        figure=["per_class_iou.png", "training_curves.png", "gallery_val.html"],
    ),
    *expand(f"{FIGURES}/{{experiment}}/gallery.html", experiment=WEAK),
]


rule provenance:
    input:
        evals=lambda w: eval_csvs(w.experiment),
        test=lambda w: (
            shard_dirs(w.experiment, "deeplab_pred", DATA["test_split"])
            if DATA["test_split"]
            else []
        ),
    output:
        f"{RESULTS}/{{experiment}}/provenance.json",
    log:
        f"{LOGS}/{{experiment}}/provenance.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/provenance.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        settings=lambda w: json.dumps(
            resolved_settings(config, w.experiment), sort_keys=True
        ),
        dir=lambda w: f"{RESULTS}/{w.experiment}",
        code=code("pcam.provenance"),
    shell:
        "pcam --log-file {log:q} provenance --experiment {wildcards.experiment:q}"
        " --dir {params.dir:q} --settings {params.settings:q} --out {output:q}"


rule summary:
    input:
        evals=ALL_EVALS,
        provenance=expand(f"{RESULTS}/{{experiment}}/provenance.json", experiment=RUN),
    output:
        report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{LOGS}/benchmarks/summary.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        splits=json.dumps(
            {
                "train": DATA["eval_split"],
                "val": DATA["val_split"],
                "aug": DATA["train_split"],
            }
        ),
        paper=json.dumps(PAPER),
        code=code("pcam.summary"),
    shell:
        "pcam --log-file {log:q} summarize --evals {input.evals:q} --splits {params.splits:q}"
        " --paper {params.paper:q} --provenance {input.provenance:q} --out {output:q}"


rule summary_page:
    input:
        f"{RESULTS}/summary.csv",
    output:
        page=report(
            f"{FIGURES}/summary.html",
            caption="../report/summary_page.rst",
            category="Summary",
        ),
        # Beside the page: the landing page (workflow.rst) includes it from there.
        fragment=f"{FIGURES}/summary_fragment.html",
        chart=report(
            f"{FIGURES}/table2.png",
            caption="../report/table2.rst",
            category="Summary",
        ),
    log:
        f"{LOGS}/summary_page.log",
    benchmark:
        f"{LOGS}/benchmarks/summary_page.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        code=code("pcam.report.summary_page"),
    shell:
        "pcam --log-file {log:q} summary-page --summary {input:q} --out {output.page:q}"
        " --fragment {output.fragment:q} --chart {output.chart:q}"


rule per_class_figure:
    input:
        evals=lambda w: eval_csvs(w.experiment),
    output:
        report(
            f"{FIGURES}/{{experiment}}/per_class_iou.png",
            caption="../report/per_class.rst",
            category="Per-class IoU",
            subcategory="{experiment}",
        ),
    log:
        f"{LOGS}/{{experiment}}/per_class_figure.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/per_class_figure.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        code=code("pcam.report.figures"),
    shell:
        "pcam --log-file {log:q} figure per-class --evals {input.evals:q} --out {output:q}"


rule curves_figure:
    input:
        curves=lambda w: [
            f"{RESULTS}/{w.experiment}/{section}/curve.csv"
            for section in trained_sections(run_supervision(config, w.experiment))
        ],
    output:
        report(
            f"{FIGURES}/{{experiment}}/training_curves.png",
            caption="../report/curves.rst",
            category="Training curves",
            subcategory="{experiment}",
        ),
    log:
        f"{LOGS}/{{experiment}}/curves_figure.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/curves_figure.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        code=code("pcam.report.figures"),
    shell:
        "pcam --log-file {log:q} figure curves --curves {input.curves:q} --out {output:q}"


rule gallery_figure:
    input:
        cams=lambda w: shard_dirs(w.experiment, "cams", DATA["train_split"]),
        rw=lambda w: shard_dirs(w.experiment, "rw", DATA["train_split"]),
        pseudo=lambda w: shard_dirs(w.experiment, "pseudo_labels", DATA["train_split"]),
        manifest=[manifest(DATA["eval_split"], kind) for kind in ("images", "labels")],
    output:
        report(
            f"{FIGURES}/{{experiment}}/gallery.html",
            caption="../report/gallery.rst",
            category="Gallery",
            subcategory="{experiment}",
        ),
    log:
        f"{LOGS}/{{experiment}}/gallery_figure.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/gallery_figure.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        dataset=DATASET_JSON,
        split=DATA["eval_split"],
        n_images=6,
        title=lambda w: f"{w.experiment}: CAM, random walk and pseudo-labels (training images)",
        code=code("pcam.report.gallery"),
    shell:
        "pcam --log-file {log:q} figure gallery --dataset {params.dataset:q}"
        " --split {params.split:q} --n-images {params.n_images} --title {params.title:q}"
        " --cams {input.cams:q} --rw {input.rw:q} --pseudo {input.pseudo:q} --out {output:q}"


# DeepLab's gallery shows the val predictions that eval_deeplab scores: no inference of its own.
rule val_gallery_figure:
    input:
        deeplab=lambda w: shard_dirs(w.experiment, "deeplab_pred", DATA["val_split"]),
        crf=lambda w: shard_dirs(w.experiment, "deeplab_pred_crf", DATA["val_split"]),
        manifest=[manifest(DATA["val_split"], kind) for kind in ("images", "labels")],
    output:
        report(
            f"{FIGURES}/{{experiment}}/gallery_val.html",
            caption="../report/gallery_val.rst",
            category="Gallery",
            subcategory="{experiment}",
        ),
    log:
        f"{LOGS}/{{experiment}}/val_gallery_figure.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/val_gallery_figure.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        dataset=DATASET_JSON,
        split=DATA["val_split"],
        n_images=6,
        prefix=lambda w: segmentation_prefix(
            stage_settings(config, w.experiment, "deeplab")
        ),
        title=lambda w: f"{w.experiment}: segmentation on the val images (as scored)",
        code=code("pcam.report.gallery"),
    shell:
        "pcam --log-file {log:q} figure gallery --dataset {params.dataset:q}"
        " --split {params.split:q} --n-images {params.n_images} --title {params.title:q}"
        " --segmentation-prefix {params.prefix:q}"
        " --deeplab {input.deeplab:q} --deeplab-crf {input.crf:q} --out {output:q}"
