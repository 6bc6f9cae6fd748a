"""From a package to a running host: the files the package ships (shipped),
where they go on a host (layout), putting them there and taking them away
again (installer), and checking a deployment (doctor)."""
