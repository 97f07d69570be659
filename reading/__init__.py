"""Pictures -> digits: everything predict.py and app.py need to read a picture. Nothing in this
package imports training/.
"""


