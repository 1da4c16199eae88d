"""The paper's analyses, one module per section, as generic functions on top of the hook points."""
