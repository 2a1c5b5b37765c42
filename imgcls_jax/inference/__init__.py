"""Using a trained model: the classifier (a workdir or a converted checkpoint) and the
`predict` command."""
