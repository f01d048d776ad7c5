-- Second database on the same server: MLflow's backend store.
CREATE DATABASE mlflow;
