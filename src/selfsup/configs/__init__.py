"""Named run configurations (YAML) shipped with the package: ``--config NAME`` finds them here."""
