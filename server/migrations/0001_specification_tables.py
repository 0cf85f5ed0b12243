"""Create the five tables of the specification unless they exist.

A database made by hand from the specification's SQL already has them, with
rows; ``safe=True`` leaves those tables and rows as they are.
"""

from peewee import (
    SQL,
    AutoField,
    Check,
    DateTimeField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)


def _created_at():
    return DateTimeField(null=True, constraints=[SQL("DEFAULT CURRENT_TIMESTAMP")])


def up(migrator, db):
    class Session(Model):
        id = TextField(primary_key=True)
        created_at = _created_at()
        image_path = TextField()
        naive_prompt = TextField()
        status = TextField(
            null=True,
            constraints=[Check("status IN ('in_progress', 'completed', 'failed')")],
        )
        final_alignment_score = DoubleField(null=True)

        class Meta:
            database = db
            table_name = "sessions"

    def session_reference():
        return ForeignKeyField(
            Session,
            column_name="session_id",
            null=True,
            on_delete="CASCADE",
            index=False,
        )

    class Prompt(Model):
        id = AutoField()
        session = session_reference()
        iteration = IntegerField(null=True)
        positive_prompt = TextField(null=True)
        negative_prompt = TextField(null=True)
        quality_score = DoubleField(null=True)
        created_at = _created_at()

        class Meta:
            database = db
            table_name = "prompts"

    class Entity(Model):
        id = AutoField()
        session = session_reference()
        entity_id = TextField(null=True)
        label = TextField(null=True)
        confidence = DoubleField(null=True)
        bbox_json = TextField(null=True)
        mask_path = TextField(null=True)
        color_hex = TextField(null=True)
        area_percent = DoubleField(null=True)

        class Meta:
            database = db
            table_name = "entities"

    class Validation(Model):
        id = AutoField()
        session = session_reference()
        attempt_number = IntegerField(null=True)
        alignment_score = DoubleField(null=True)
        preserved_count = IntegerField(null=True)
        modified_count = IntegerField(null=True)
        unintended_count = IntegerField(null=True)
        user_feedback = TextField(null=True)
        created_at = _created_at()

        class Meta:
            database = db
            table_name = "validations"

    class UserFeedback(Model):
        id = AutoField()
        session = session_reference()
        feedback_type = TextField(
            null=True,
            constraints=[Check("feedback_type IN ('accept', 'reject', 'partial')")],
        )
        comments = TextField(null=True)
        rating = IntegerField(null=True, constraints=[Check("rating BETWEEN 1 AND 5")])
        created_at = _created_at()

        class Meta:
            database = db
            table_name = "user_feedback"

    db.create_tables([Session, Prompt, Entity, Validation, UserFeedback], safe=True)
