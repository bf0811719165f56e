"""Writing results where people read them: the ranking folder, dataset/model/pilot cards (Jinja templates), and
``car-hf push`` to the Hub. Every stage writes its outputs through here; it imports only ``core`` and ``plots``.
"""
