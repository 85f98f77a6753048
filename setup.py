from setuptools import find_namespace_packages, setup

# Versions checked to work together on this registry (see docs/decisions.md):
# dagster 1.13.27 pairs with the 0.29.27 integrations; dbt-core 1.12 needs network at install.
setup(
    name="kpi_pipelines",
    version="0.1.0",
    description="Dagster project measuring the AutoDescribe retrieval-augmented product system",
    # The data directories (defaults/, api/pages/, api/static/) have no __init__.py, yet Python
    # imports them as namespace packages: listed as packages with their files as package data,
    # setuptools installs them without its "absent from `packages`" warning.
    packages=find_namespace_packages(include=["kpi_pipelines", "kpi_pipelines.*"], exclude=["*.__pycache__"]),
    package_data={
        "kpi_pipelines.defaults": ["*"],
        "kpi_pipelines.alerts": ["*.yaml"],
        "kpi_pipelines.api.pages": ["*"],
        "kpi_pipelines.api.static": ["*"],
    },
    python_requires=">=3.10",
    install_requires=[
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "dagster-postgres==0.29.27",
        "dagster-dbt==0.29.27",
        "dagster-slack==0.29.27",
        "dbt-core>=1.10,<1.12",
        "dbt-duckdb>=1.10,<1.12",
        "dbt-postgres>=1.10,<1.12",
        "duckdb>=1.3,<3",
        "duckdb-engine>=0.17,<0.18",
        "psycopg[binary]>=3.2,<4",
        "SQLAlchemy>=2.0,<2.2",
        "great-expectations>=1.3,<2",
        "slack-sdk>=3.30,<4",
        "pandas>=2.2",
        "numpy>=1.26",
        "scipy>=1.11",
        "PyYAML>=6",
        "fastapi>=0.115,<1",
        "uvicorn[standard]>=0.30,<1",
        "orjson>=3.9",
        "python-dotenv>=1,<2",  # `.env`, read by `kpi` as by Dagster's commands (kpi_pipelines/program.py)
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytrec-eval-terrier>=0.5.6",
            "statsmodels>=0.14",
            "httpx>=0.27",
            "schemathesis>=4,<5",
            "playwright>=1.45",
        ],
    },
    entry_points={"console_scripts": ["kpi=kpi_pipelines.program:run"]},
)
