"""car_hf inside other libraries' training loops; each module imports its library, so import it by name.

* :mod:`car_hf.integrations.trl`: ``CARSFTTrainer``, TRL's ``SFTTrainer`` whose model card carries car_hf's section.

Example:
    >>> from car_hf.integrations.trl import CARSFTTrainer
    >>> CARSFTTrainer.__mro__[1].__name__
    'SFTTrainer'
"""
