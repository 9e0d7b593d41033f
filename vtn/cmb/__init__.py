"""The Central Monitoring Body, beside the VTN on the grid side: plan validation, fleet monitors and control override."""
