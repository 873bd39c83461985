"""Operating the loop: submit and schedule runs, notify outcomes, tidy the model store, report.

`kfp_api` (submit, schedule, recent runs through `kfp.Client`), `notify` (the exit
handler's core), `cleanup` (old model versions), `report` (the loop at a glance as one
HTML page), `catalog` (each component compiled to its own YAML). Only `kfp_api`,
`catalog` and `component` import kfp.
"""
