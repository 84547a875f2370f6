"""Federated training: FedAvg / FedProx over clients whose rows never leave them (``loopml federate``)."""
