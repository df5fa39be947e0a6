"""The data a gate scores: the reference study's selection and token rules, prepared datasets and their fingerprints
(rules), and where the rows come from, checked before any work (files)."""
