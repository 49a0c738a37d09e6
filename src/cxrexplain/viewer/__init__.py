"""The reader's viewer (``cxrexplain view``): one trained model's explanations in a browser, rated by a reader.

:mod:`.data` gathers what the explain and train stages wrote for one model (maps, measures, probabilities, the cached
images and boxes); :mod:`.server` serves it and the page (``page.html``) on 127.0.0.1 and saves each rating to the
reader's CSV (:mod:`cxrexplain.evaluation.ratings`) as it is given.
"""
