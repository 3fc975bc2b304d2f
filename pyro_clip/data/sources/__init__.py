"""One module per kind of data set, each registering a :class:`~pyro_clip.data.sources.base.
DataSource` with :func:`~pyro_clip.data.registry.register_dataset`; the registry imports every
module here the first time a data set is asked for."""
