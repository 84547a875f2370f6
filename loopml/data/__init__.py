"""Reading tables, inferring column types, splitting. Import the submodules directly."""
