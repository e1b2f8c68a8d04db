"""The offline demo on an embedded tiny R1 (`python -m r1_plugin.demo`, `make demo`) and the tools that build it.

- `r1_plugin.demo.run`: the demo (`run_demo(DemoConfig(...))`, options for a real R1 + Goodfire SAE) and its public
  import path (it re-exports the names of the modules below).
- `r1_plugin.demo.config`, `.loading`, `.generation`, `.report`, `.cli`: its options and result, the model/SAE/feature
  loaders, the generations, the plots and report, and its command line.
- `r1_plugin.demo.assets`: the embedded assets, loaded by path from the package folder.
- `r1_plugin.demo.synthetic`: synthetic R1-style traces and the tiny model's architecture.
- `r1_plugin.demo.build`: the stages of `scripts/make_tiny_r1.py` (model, sae, features).
"""
