"""Who owns which envelope sender: the map file and domains (sans-IO), and the owners a verdict asks."""
