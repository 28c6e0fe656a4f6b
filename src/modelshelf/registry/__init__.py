"""The model registry: git tags are the registry, the DVC remote holds the bytes.

- :mod:`~modelshelf.registry.core`: the workspace and the registry read from GTO's tags;
- :mod:`~modelshelf.registry.release`: releasing the workspace model;
- :mod:`~modelshelf.registry.promotion`: stage assignment and deprecation;
- :mod:`~modelshelf.registry.restore` and :mod:`~modelshelf.registry.checkout`: a release's
  files back, verified; rollback of the workspace;
- :mod:`~modelshelf.registry.gc`: garbage collection that keeps every release;
- :mod:`~modelshelf.registry.audit`: ``shelf verify --all``;
- :mod:`~modelshelf.registry.signing`: signed releases and the trust policy;
- :mod:`~modelshelf.registry.bom` and :mod:`~modelshelf.registry.environment`: a release's
  CycloneDX bill of materials and the requirements that recreate its environment.
"""
