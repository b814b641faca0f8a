"""kontur: infrastructure as code for a region's medical-imaging network.

Data flows one way: inventory (YAML) -> validated model (kontur.model,
kontur.rules) -> rendered files (kontur.render) -> deployed host (deploys/)
-> checks that read the same inventory (checks/).
"""
__version__ = "0.1.0"
