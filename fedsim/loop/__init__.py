"""The round loops: synchronous rounds (`coordinator`) and FedBuff's event loop on the simulated clock
(`asyncloop`), the rows a round records (`rows`) and how rounds are scheduled (`schedule`). They know
the engine, the strategy and the pipeline only through their interfaces."""
