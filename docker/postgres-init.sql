-- The second database: the Optuna study storage of the sweep workers (.../optuna in their
-- --storage URL). The PostgreSQL image creates POSTGRES_DB (mlflow, MLflow's store) itself and
-- runs this file once, on the first start with an empty data volume.
CREATE DATABASE optuna;
