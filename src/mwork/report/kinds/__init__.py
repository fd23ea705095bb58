"""mwork's own results kinds: one module per kind, each registering its kinds where they are
defined. :mod:`mwork.report.registry` imports every module here the first time the kinds are
read or registered (a new module needs no list; see there for adding a kind from outside)."""
